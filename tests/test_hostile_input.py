"""Hostile and malformed input: stored and read back literally, or refused with a clear error code.

The rule these tests hold the store to:

* a value the store accepts (name, tag key or value, alias, description) reads back exactly as given;
* a value it cannot hold (NUL bytes, too long, characters MLflow forbids, a version that is not a
  whole number from 1 to 2**31-1) is refused with INVALID_PARAMETER_VALUE;
* a well-formed lookup that finds nothing is RESOURCE_DOES_NOT_EXIST (as in MLflow's own store);
* a filter string compares its values literally (``=``, ``!=``) or as LIKE patterns (``%`` and
  ``_`` wildcards, backslash escapes, as in MLflow's SQL store), or is refused as
  INVALID_PARAMETER_VALUE; nothing in it is ever executed as SQL.

A zip in ``model_binary`` whose entries point outside the model directory (zip-slip: ``../``,
absolute paths, symlinks) is refused when loaded and writes nothing anywhere.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import re
import stat
import zipfile

import mlflow
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from mlflow.utils.search_utils import SearchModelUtils, SearchModelVersionUtils

from mlflow_pgmodels._cache import cache
from mlflow_pgmodels._pg.uri import parse_download_uri
from tests import sample

INJECTION = "'; DROP TABLE models; --"
NASTY = [
    INJECTION, "'", "''", '"', "`", "\\", "\\'", "%", "_", "%_%", "a%b", "a_b", "\\%", "100%",
    "x' OR '1'='1", "1; DELETE FROM models", "$1", "%s", "%(name)s", "{}", "名前", "🙂", "ǅ", "ß",
    "\u202e", "\x00", "a\x00b", "\n", "\t", " ", "", "x" * 10_000, "é" * 300, "latest", "v1",
]
nasty_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=20),
    st.builds(lambda a, b, c: a + b + c, st.sampled_from(NASTY), st.text(max_size=5), st.sampled_from(NASTY)),
)
versions = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, 1, 2, 3, 4, 2**31 - 1, 2**31, -1]),
    nasty_text, st.sampled_from(["1.0", " 2", "+3", "0x1", "1e3", "NaN", "١"]),
)
SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# the tables that must survive every input
TABLES = ["models", "pgm_registered_models", "pgm_model_version_tags", "pgm_registered_model_tags",
          "pgm_aliases", "registered_models", "experiments", "canary"]
# names whose filters are easy to get wrong
TRICKY_NAMES = ["a%b", "a_b", "aXb", "ab", "it's", 'say "hi"', INJECTION, "名前", "back\\slash", "Plain", "plain"]

tried: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def report_inputs(request):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture and tried:
        with capture.global_and_fixture_disabled():
            print(f"\nhostile inputs tried: {sum(tried.values())} ({dict(tried)})")


@pytest.fixture
def world(client, db, tmp_path):
    """A registry with 'base' versions 1-3, names that trip up filters, and a canary table."""
    path = str(tmp_path / "model")
    mlflow.sklearn.save_model(sample.regressor(1.0), path, pip_requirements=["scikit-learn"])
    client.create_registered_model("base")
    client.create_model_version("base", path)
    for _ in range(2):
        client.copy_model_version("models:/base/1", "base")
    for name in TRICKY_NAMES:
        client.create_registered_model(name)
        client.create_model_version(name, "models:/base/1", tags={"k": name})
    db.sql("CREATE TABLE canary (x int)")
    db.sql("INSERT INTO canary VALUES (42)")
    return client


def _intact(db) -> None:
    """Every table is still there, the canary row too, and the base versions are unchanged."""
    found = db.sql("SELECT array_agg(relname::text) FROM pg_class WHERE relname = ANY(%s)", (TABLES,))[0][0]
    assert sorted(found) == sorted(TABLES)
    assert db.sql("SELECT x FROM canary") == [(42,)]
    assert db.sql("SELECT array_agg(version ORDER BY version) FROM models WHERE name = 'base'") == [([1, 2, 3],)]


def _refused(e: MlflowException, *codes: str) -> None:
    assert e.error_code in (codes or ("INVALID_PARAMETER_VALUE",)), (e.error_code, e.message[:300])


def _new_name(prefix: str, value: str) -> str:
    """A name unique to this input, so that examples never collide with each other."""
    return f"{prefix}-{hashlib.sha1(value.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


# ---------------------------------------------------------------------- names
@SETTINGS
@given(name=nasty_text)
@example(name=INJECTION + "x")
def test_model_names_are_stored_literally_or_refused(world, db, name):
    tried["names"] += 1
    try:
        created = world.create_registered_model(name)
    except MlflowException as e:
        _refused(e, "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS")
        if e.error_code == "RESOURCE_ALREADY_EXISTS":
            assert world.get_registered_model(name).name == name
        elif "\x00" not in name:
            assert db.sql("SELECT count(*) FROM pgm_registered_models WHERE name = %s", (name,)) == [(0,)]
        _intact(db)
        return
    assert created.name == name
    mv = world.create_model_version(name, "models:/base/1")
    assert world.get_model_version(name, mv.version).name == name
    assert parse_download_uri(world.get_model_version_download_uri(name, mv.version)) == (name, int(mv.version))
    try:
        assert [m.name for m in world.search_model_versions(f"name = {_quote(name)}")] == [name]
    except MlflowException as e:  # a name with both kinds of quotes cannot be written in a filter
        assert "'" in name and '"' in name
        _refused(e)
    assert db.sql("SELECT name FROM models WHERE name = %s", (name,)) == [(name,)]
    _intact(db)


def _quote(value: str) -> str:
    """A filter-string literal; MLflow has no escape for a quote inside one, so pick the other kind."""
    return f'"{value}"' if "'" in value else f"'{value}'"


# ---------------------------------------------------------------------- versions
@SETTINGS
@given(version=versions)
def test_versions_must_be_whole_numbers_in_range(world, db, version):
    tried["versions"] += 1
    try:
        number = int(str(version))
    except ValueError:
        number = None
    valid = number is not None and 0 < number < 2**31
    calls = {
        "get": lambda: world.get_model_version("base", version),
        "download uri": lambda: world.get_model_version_download_uri("base", version),
        "tag": lambda: world.set_model_version_tag("base", version, "checked", "yes"),
        "alias": lambda: world.set_registered_model_alias("base", "probe", version),
        "describe": lambda: world.update_model_version("base", version, "probed"),
    }
    for what, call in calls.items():
        try:
            call()
        except MlflowException as e:
            if valid and number <= 3:
                raise AssertionError(f"{what} of existing version {version!r} failed: {e.message}") from None
            _refused(e, "RESOURCE_DOES_NOT_EXIST" if valid else "INVALID_PARAMETER_VALUE")
        else:
            assert valid and number <= 3, f"{what} accepted version {version!r}"
    _intact(db)


# ---------------------------------------------------------------------- tags, aliases, descriptions
@SETTINGS
@given(key=nasty_text, value=nasty_text)
@example(key="note", value=INJECTION)
@example(key="event", value=INJECTION)
def test_tags_read_back_literally_or_are_refused(world, db, key, value):
    tried["tags"] += 1
    for target, set_tag, read in (
        ("model", lambda: world.set_registered_model_tag("base", key, value),
         lambda: world.get_registered_model("base").tags),
        ("version", lambda: world.set_model_version_tag("base", "2", key, value),
         lambda: world.get_model_version("base", "2").tags),
    ):
        try:
            set_tag()
        except MlflowException as e:
            _refused(e)
            continue
        assert read()[key] == value, target
    _intact(db)


@SETTINGS
@given(alias=nasty_text)
@example(alias="champion")
def test_aliases_read_back_literally_or_are_refused(world, db, alias):
    tried["aliases"] += 1
    try:
        world.set_registered_model_alias("base", alias, "3")
    except MlflowException as e:
        _refused(e)
        if alias.lower() == "latest":  # reserved: always the highest active version
            assert int(world.get_model_version_by_alias("base", alias).version) == 3
        else:
            with pytest.raises(MlflowException) as lookup:
                world.get_model_version_by_alias("base", alias)
            _refused(lookup.value, "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
    else:
        assert int(world.get_model_version_by_alias("base", alias).version) == 3
        assert world.get_registered_model("base").aliases[alias] in ("3", 3)
    _intact(db)


@SETTINGS
@given(description=nasty_text)
def test_descriptions_read_back_literally_or_are_refused(world, db, description):
    tried["descriptions"] += 1
    try:
        world.update_registered_model("base", description)
        world.update_model_version("base", "1", description)
    except MlflowException as e:
        _refused(e)
        assert "\x00" in description
    else:
        assert world.get_registered_model("base").description == description
        assert world.get_model_version("base", "1").description == description
    _intact(db)


# ---------------------------------------------------------------------- filter strings
def _like(pattern: str, text: str, ignore_case: bool) -> bool:
    """PostgreSQL's LIKE: % and _ are wildcards, a backslash makes the next character literal.

    A pattern ending in a lone backslash matches nothing (PostgreSQL raises an error on the rows
    that get that far, so a search that succeeded had none).
    """
    regex, chars = "", iter(pattern)
    for ch in chars:
        if ch == "\\":
            ch = next(chars, None)
            if ch is None:
                return False
            regex += re.escape(ch)
        else:
            regex += ".*" if ch == "%" else "." if ch == "_" else re.escape(ch)
    return re.fullmatch(regex, text, re.DOTALL | (re.IGNORECASE if ignore_case else 0)) is not None


def _matches(op: str, value: str, text: str) -> bool:
    return {"=": text == value, "!=": text != value}.get(op) if op in ("=", "!=") else \
        _like(value, text, op == "ILIKE")


@SETTINGS
@given(value=nasty_text, op=st.sampled_from(["=", "!=", "LIKE", "ILIKE"]),
       field=st.sampled_from(["name", "tags.k"]), quote=st.sampled_from(["'", '"']))
@example(value="a%b", op="=", field="name", quote="'")
@example(value="a\\_b", op="LIKE", field="name", quote="'")
@example(value=INJECTION, op="=", field="name", quote='"')
def test_filter_strings_match_literally_or_are_refused(world, db, value, op, field, quote):
    tried["filters"] += 1
    names = TRICKY_NAMES + ["base"] if field == "name" else TRICKY_NAMES  # only these carry tag k
    flt = f"{field} {op} {quote}{value}{quote}"
    for search, parse in ((world.search_registered_models, SearchModelUtils.parse_search_filter),
                          (world.search_model_versions, SearchModelVersionUtils.parse_search_filter)):
        if field != "name" and search == world.search_registered_models:
            continue  # the registered models carry no tag k
        try:
            got = sorted({m.name for m in search(flt, max_results=1000)} & set(names))
        except MlflowException as e:
            _refused(e)
            continue
        (clause,) = [c for c in parse(flt) if c["key"] in ("name", "k")]
        # case-folding beyond ASCII depends on the database's locale: only ASCII is compared for ILIKE
        compared = [n for n in names if op != "ILIKE" or (n.isascii() and clause["value"].isascii())]
        assert [n for n in got if n in compared] == sorted(n for n in compared if _matches(op, clause["value"], n)), flt
    _intact(db)


@SETTINGS
@given(value=st.one_of(versions.map(str), nasty_text), op=st.sampled_from(["=", "!=", "<", ">=", "LIKE"]))
def test_version_number_filters_are_numbers_or_refused(world, db, value, op):
    tried["version filters"] += 1
    try:
        found = world.search_model_versions(f"name = 'base' AND version_number {op} {value}")
    except MlflowException as e:
        _refused(e)
    else:
        assert {int(mv.version) for mv in found} <= {1, 2, 3}
    _intact(db)


# ---------------------------------------------------------------------- zip-slip
class _Unseekable(io.RawIOBase):
    """A write-only stream: zipfile then writes data descriptors, as streaming zip tools do."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buffer += data
        return len(data)


def _evil_zip(entries: list[tuple[str, bytes, bool]], seekable: bool) -> bytes:
    """A zip with a real MLmodel plus ``entries`` (name, data, is_symlink)."""
    out = io.BytesIO() if seekable else _Unseekable()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("MLmodel", "flavors:\n  python_function:\n    loader_module: mlflow_pgmodels.legacy\n")
        for name, data, symlink in entries:
            info = zipfile.ZipInfo(name)
            if symlink:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return bytes(out.getvalue() if seekable else out.buffer)


@pytest.mark.parametrize("seekable", [True, False], ids=["plain-zip", "streamed-zip"])
@pytest.mark.parametrize("attack", ["dotdot", "nested-dotdot", "absolute", "symlink"])
def test_zip_slip_in_model_binary_writes_nothing_outside(client, db, tmp_path, attack, seekable):
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = {
        "dotdot": [("../../../../outside/pwned.txt", b"pwned", False)],
        "nested-dotdot": [("code/../../../../../outside/pwned.txt", b"pwned", False)],
        "absolute": [(str(outside / "pwned.txt"), b"pwned", False)],
        "symlink": [("link", str(outside).encode(), True), ("link/pwned.txt", b"pwned", False)],
    }[attack]
    blob = _evil_zip(entries, seekable)
    db.sql("INSERT INTO models (name, version, model_type, event, model_binary, sha256, size_bytes, format)"
           " VALUES ('evil', 1, 'regression', 'default', %s, %s, %s, 'mlflow-zip')",
           (blob, hashlib.sha256(blob).hexdigest(), len(blob)))
    mlflow.set_tracking_uri(db.uri)

    with pytest.raises(MlflowException) as e:
        mlflow.pyfunc.load_model("models:/evil/1")

    assert e.value.error_code == "DATA_LOSS"
    assert "Model 'evil' version 1" in e.value.message
    assert list(outside.iterdir()) == []
    assert [p for p in tmp_path.rglob("pwned*")] == []
    assert cache.entries() == []
    assert not any(os.path.islink(os.path.join(r, f)) for r, ds, fs in os.walk(tmp_path) for f in fs + ds)
