"""Flask peer: `gunicorn -w 2 bench.peers.flask_app:app` (sync workers), run from the repo root."""

from flask import Flask, Response, jsonify, request

from algopkg.BenchMLP.mlp import MLP

app = Flask(__name__)
MODEL = MLP()  # once per worker, at import


@app.post("/mlp")
def mlp() -> Response:
    return jsonify(MODEL.predict([request.get_json(force=True)])[0])
