"""safetensors, the checkpoint interchange format, in plain numpy (no `safetensors` package):

  u64 little-endian N        the header's length in bytes
  N bytes of JSON            {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
                              "__metadata__": {str: str}}, padded with spaces to a multiple of 8
  data                       each tensor's little-endian bytes, offsets relative to the data start

save_safetensors writes what src/core/io/safetensors.ts writes, byte for byte: tensors sorted by
name, compact JSON with non-ASCII escaped (json.dumps' default), metadata last with every value
turned into a string. Shapes are kept as given, a 0-d array included (shape []).
"""
import json
import struct

import numpy as np

# the dtypes src/core/io/safetensors.ts reads and writes
DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}
_CODE = {np.dtype(v): k for k, v in DTYPES.items()}


def _code(name, a):
    code = _CODE.get(a.dtype.newbyteorder("="))  # any byte order: it is written little-endian
    if code is None:
        raise ValueError(f"tensor '{name}': dtype {a.dtype} is not one of {', '.join(DTYPES)}")
    return code


def encode_safetensors(tensors, metadata=None):
    """The file's bytes for {name: array-like} and an optional {key: value} metadata dict."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ValueError("'__metadata__' is not a valid tensor name")
        a = np.asarray(tensors[name])
        code = _code(name, a)
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode("ascii")
    h += b" " * (-len(h) % 8)  # the data start 8-aligned
    return b"".join([struct.pack("<Q", len(h)), h, *blobs])


def save_safetensors(path, tensors, metadata=None):
    with open(path, "wb") as f:
        f.write(encode_safetensors(tensors, metadata))


def load_safetensors(path):
    """({name: numpy array}, {key: str}) from a file; a one-line ValueError naming it if malformed."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    n = struct.unpack("<Q", raw[:8])[0]
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header of {n} bytes runs past the file ({len(raw)} bytes)")
    try:
        header = json.loads(raw[8:8 + n])
    except ValueError as e:
        raise ValueError(f"{path}: header is not JSON ({e})") from None
    data = memoryview(raw)[8 + n:]
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for name, h in header.items():
        if h.get("dtype") not in DTYPES:
            raise ValueError(f"{path}: tensor '{name}': dtype {h.get('dtype')} is not one of {', '.join(DTYPES)}")
        dt = np.dtype(DTYPES[h["dtype"]]).newbyteorder("<")
        begin, end = h["data_offsets"]
        count = int(np.prod(h["shape"], dtype=np.int64))
        if end - begin != count * dt.itemsize or not 0 <= begin <= end <= len(data):
            raise ValueError(f"{path}: tensor '{name}': offsets {begin}..{end} do not fit shape {h['shape']} {h['dtype']} "
                             f"in {len(data)} data bytes")
        out[name] = np.frombuffer(data[begin:end], dtype=dt).reshape(h["shape"]).astype(dt.newbyteorder("="))
    return out, meta
