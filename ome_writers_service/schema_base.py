"""What every settings model shares: the accepted literal values, text checks for
OME-XML, and `_Model`, whose failed assignment leaves the model as it was."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

DimensionType = Literal["space", "time", "channel", "position", "other"]
Compression = Literal["blosc-zstd", "blosc-lz4", "zstd", "lzw", "none"]
BackpressurePolicy = Literal["block", "drop", "raise"]
Downsampling = Literal["mean", "stride", "min", "max"]

#: dtypes both formats store natively.
SUPPORTED_DTYPES = (
    "uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64",
)
#: dtypes OME-Zarr stores besides those (OME-XML has no 64-bit integer PixelType).
ZARR_ONLY_DTYPES = ("int64", "uint64")
ZARR_COMPRESSIONS = ("blosc-zstd", "blosc-lz4", "zstd", "none")
#: the level each codec gets when ``compression_level`` is None: ome-writers 0.3.2's
DEFAULT_LEVELS = {"blosc-zstd": 3, "blosc-lz4": 5, "zstd": 3}
#: the levels each codec accepts (blosc: 1-9; zstd: negative levels trade ratio for speed)
LEVEL_RANGES = {"blosc-zstd": (1, 9), "blosc-lz4": (1, 9), "zstd": (-7, 22)}
TIFF_COMPRESSIONS = ("lzw", "zstd", "none")


_TYPE_OF_NAME: dict[str, DimensionType] = {
    "x": "space", "y": "space", "z": "space", "t": "time", "c": "channel", "p": "position",
}

# XML 1.0 forbids these characters anywhere in a document (OME-XML is XML 1.0).
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(value: str | None, info: ValidationInfo) -> str | None:
    if value is not None and (m := _XML_ILLEGAL.search(value)):
        raise ValueError(
            f"{info.field_name} {value!r} contains the character {m.group()!r} (at {m.start()}), "
            "which XML 1.0 forbids; it cannot be written into OME-XML"
        )
    return value


#: A string that lands in OME-XML.
XmlStr = Annotated[str, AfterValidator(_xml_text)]
#: A non-empty string that lands in OME-XML (a name).
XmlName = Annotated[str, Field(min_length=1), AfterValidator(_xml_text)]


def _strict(info: ValidationInfo) -> bool | None:
    """Whether the validation that reached a validator is strict: models a validator builds
    from mappings are then validated strictly too (the daemon's check of wire settings,
    `wire_settings.parse`, passes ``context={"strict": True}``)."""
    return True if isinstance(info.context, Mapping) and info.context.get("strict") else None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def __setattr__(self, name: str, value: Any) -> None:
        # pydantic leaves a rejected assignment in place; put the model back as it was
        if name not in type(self).model_fields:
            return super().__setattr__(name, value)
        saved = dict(self.__dict__)
        saved_set = set(self.__pydantic_fields_set__)
        try:
            self._before_assign(name, value)
            super().__setattr__(name, value)
        except Exception:
            self.__dict__.clear()
            self.__dict__.update(saved)
            self.__pydantic_fields_set__.clear()
            self.__pydantic_fields_set__.update(saved_set)
            raise

    def _before_assign(self, name: str, value: Any) -> None:
        """Called before a field is assigned (inside the restore-on-failure scope)."""

    def _given(self, field: str) -> bool:
        """Whether the user gave ``field`` a value (not derived, not None)."""
        return field in self.model_fields_set and getattr(self, field) is not None
