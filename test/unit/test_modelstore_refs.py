import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from modelserve.modelstore import LocalStore, ModelRef, S3Store, open_store, parse_ref, store_error


@pytest.mark.parametrize(
    ("text", "ref", "pinned"),
    [
        ("w.npz", ModelRef("w.npz"), "w.npz"),
        ("team/w.npz", ModelRef("team/w.npz"), "team/w.npz"),
        ("digits@3", ModelRef("digits", 3), "digits@3"),
        ("digits@0", ModelRef("digits", 0), "digits@0"),
        ("team/digits@12", ModelRef("team/digits", 12), "team/digits@12"),
        ("digits@latest", ModelRef("digits", latest=True), "digits@latest"),
    ],
)
def test_the_three_accepted_forms_parse(text: str, ref: ModelRef, pinned: str) -> None:
    assert parse_ref(text) == ref
    assert ref.text == pinned
    assert ref.versioned == ("@" in text)


@pytest.mark.parametrize(
    "text", ["digits@", "digits@x1", "@3", "digits@-1", "digits@03", "digits@3@4", "digits@LATEST", "", "/abs.npz"]
)
def test_invalid_forms_say_which_forms_are_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"'digits@3'.*'digits@latest'"):
        parse_ref(text)


def test_a_name_that_climbs_out_of_the_zoo_is_refused() -> None:
    with pytest.raises(ValueError, match="relative to model_zoo"):
        parse_ref("../secrets@1")


def test_open_store_picks_the_store_by_its_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never contacted: a client makes no request
    s3 = open_store("s3://models/team/zoo/")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix, s3.uri) == ("models", "team/zoo", "s3://models/team/zoo")
    local = open_store("/data/Model_ZOO")
    assert isinstance(local, LocalStore) and local.uri == "/data/Model_ZOO"


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": ""}}, "HeadObject")


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (_client_error("404"), "no such key"),
        (_client_error("NoSuchKey"), "no such key"),
        (_client_error("NoSuchBucket"), "no such bucket 'models'"),
        (_client_error("403"), "access denied"),
        (_client_error("AccessDenied"), "access denied"),
        (_client_error("InvalidAccessKeyId"), "credentials were refused"),
        (_client_error("412"), "changed since it was resolved"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), "endpoint unreachable"),
        (NoCredentialsError(), "no AWS credentials; set AWS_ACCESS_KEY_ID"),
    ],
)
def test_store_errors_name_the_uri_and_the_cause_in_plain_words(exc: Exception, cause: str) -> None:
    message = str(store_error("s3://models/zoo/w.npz", exc))
    assert message.startswith("s3://models/zoo/w.npz: ") and cause in message
