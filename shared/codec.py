"""The one place that encodes and decodes broker messages (msgpack via msgspec)."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from shared.errors import BadRequest

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes, kind: type[T]) -> T:
    """Decode `data` as `kind`; a malformed message raises `BadRequest`."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.msgpack.Decoder(kind)
    try:
        return decoder.decode(data)  # type: ignore[no-any-return]
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise BadRequest(f"malformed {kind.__name__} message: {e}") from e
