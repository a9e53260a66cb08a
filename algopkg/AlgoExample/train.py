"""Train the example model offline: a 64-64-10 MLP on scikit-learn's digits.

    python algopkg/AlgoExample/train.py   # needs scikit-learn; writes Model_ZOO/algoexample_model_v1.npz

Serving needs only numpy: the weights are stored as plain arrays.
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

OUT = Path(__file__).resolve().parents[2] / "Model_ZOO" / "algoexample_model_v1.npz"


def main() -> None:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, random_state=0)
    mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=0).fit(x_train, y_train)
    print(f"test accuracy: {mlp.score(x_test, y_test):.3f}")
    np.savez(
        OUT,
        w1=mlp.coefs_[0].astype(np.float32),
        b1=mlp.intercepts_[0].astype(np.float32),
        w2=mlp.coefs_[1].astype(np.float32),
        b2=mlp.intercepts_[1].astype(np.float32),
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
