"""distkm.io.locations: what a URL shows of itself, and credentials that must never be used or shown."""

import pytest

from distkm.io.locations import canonical, filesystem, public_url

#: An AWS-like secret key: base64 characters, "/" and "+" included (moto's and AWS's often hold a "/").
SECRET = "Phoz/Quat+Hl0JV/HoHx8"


@pytest.mark.parametrize("url, shown", [
    (f"s3://AKIAEXAMPLE:{SECRET}@bucket/m.zarr", "s3://bucket/m.zarr"),
    ("s3://AKIAEXAMPLE:plain@bucket/m.zarr", "s3://bucket/m.zarr"),
    (f"gs://user:{SECRET}@bucket/a/b", "gs://bucket/a/b"),
    ("http://user:pass@host:8080/m.zarr?v=1", "http://host:8080/m.zarr?v=1"),
    ("http://host:8080/data@2024/m.zarr", "http://host:8080/data@2024/m.zarr"),  # an "@" in the path stays
    ("s3://bucket/a:b@c/m.zarr", "s3://bucket/a:b@c/m.zarr"),
    ("memory:///x", "memory:///x"),
])
def test_a_url_is_shown_without_its_user_part(url, shown):
    assert public_url(url) == shown
    assert canonical(url) == canonical(shown)


@pytest.mark.parametrize("url", [f"s3://AKIAEXAMPLE:{SECRET}@bucket/m.zarr", "s3a://key:secret@bucket/m.zarr",
                                 f"gcs://user:{SECRET}@bucket/m.zarr"])
def test_credentials_inside_an_object_store_url_are_refused_without_a_piece_of_them(url):
    with pytest.raises(ValueError, match="credentials inside a .* URL are not used") as refused:
        filesystem(url)
    message = str(refused.value)
    assert not any(piece in message for piece in [*SECRET.split("/"), "secret", "AKIAEXAMPLE", "key:"])
