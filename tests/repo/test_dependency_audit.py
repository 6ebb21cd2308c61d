"""No locked dependency has a known vulnerability that nobody has looked at.

``pip-audit`` checks every version pinned in ``requirements/constraints.txt`` (the lock file
``./scripts/bootstrap`` installs) against PyPI's advisory data. Each advisory it reports must be
listed, with a written reason, in ``requirements/audit-allowlist.toml``; any other fails the test,
naming the package, the advisory and the fixed versions.

An audit that could not look anything up must not pass as a clean one: pip-audit exits 0 and says
"No known vulnerabilities found" even when it skipped every package (as from a machine whose PyPI
mirror answers the project pages but not the per-version JSON pip-audit reads, where each package is
"Dependency not found on PyPI and could not be audited"). So when most packages were skipped, or
PyPI could not be reached at all, the test is skipped with a reason that says so and how many.

The judging is kept apart from running pip-audit, and tested on made-up reports, so the failing
path is exercised even where the audit itself cannot run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = ROOT / "requirements" / "constraints.txt"
ALLOWLIST = ROOT / "requirements" / "audit-allowlist.toml"
PIP_AUDIT = Path(sys.executable).with_name("pip-audit")
# Above this share of packages skipped, the audit says nothing about the rest of them either.
MAX_SKIPPED_SHARE = 0.5
TIMEOUT_S = 300


@dataclass(frozen=True)
class Allowed:
    id: str
    package: str
    reason: str


@dataclass
class Verdict:
    audited: int
    skipped: dict[str, str]  # package -> pip-audit's skip reason
    unlisted: list[str] = field(default_factory=list)  # one line per advisory not in the allowlist
    stale: list[Allowed] = field(default_factory=list)  # allowlisted, on an audited package, not reported

    @property
    def total(self) -> int:
        return self.audited + len(self.skipped)

    def unaudited_reason(self) -> str | None:
        """Why this audit cannot vouch for the lock file, or None when it can."""
        if self.total == 0:
            return "pip-audit reported no packages at all"
        if len(self.skipped) > MAX_SKIPPED_SHARE * self.total:
            reasons = sorted({reason.split(":")[0] for reason in self.skipped.values()})
            return (
                f"advisory service unreachable from this machine: {len(self.skipped)} of {self.total} packages "
                f"could not be audited ({'; '.join(reasons)})"
            )
        return None


def load_allowlist(path: Path) -> list[Allowed]:
    """The ``[[ignore]]`` entries; each must have a non-empty id, package and reason."""
    data = tomllib.loads(path.read_text())
    unknown = set(data) - {"ignore"}
    assert not unknown, f"{path}: unknown keys {sorted(unknown)}; only [[ignore]] tables belong here"
    entries: list[Allowed] = []
    for index, entry in enumerate(data.get("ignore", [])):
        keys = {"id", "package", "reason"}
        assert set(entry) == keys, f"{path}: [[ignore]] #{index + 1} needs exactly {sorted(keys)}, has {sorted(entry)}"
        assert all(isinstance(entry[k], str) and entry[k].strip() for k in keys), (
            f"{path}: [[ignore]] #{index + 1}: id, package and reason must be non-empty strings"
        )
        entries.append(
            Allowed(id=entry["id"], package=str(canonicalize_name(entry["package"])), reason=entry["reason"])
        )
    return entries


def judge(report: dict[str, Any], allowlist: list[Allowed]) -> Verdict:
    """Sort pip-audit's JSON report (``-f json``) into audited, skipped, unlisted and stale."""
    verdict = Verdict(audited=0, skipped={})
    reported: set[tuple[str, str]] = set()
    audited_packages: set[str] = set()
    for dependency in report["dependencies"]:
        name = str(canonicalize_name(dependency["name"]))
        if "skip_reason" in dependency:
            verdict.skipped[name] = dependency["skip_reason"]
            continue
        verdict.audited += 1
        audited_packages.add(name)
        for vuln in dependency.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            reported |= {(name, advisory) for advisory in ids}
            if not any(entry.package == name and entry.id in ids for entry in allowlist):
                fixed = ", ".join(vuln.get("fix_versions", [])) or "none yet"
                also = f" (also {', '.join(sorted(ids - {vuln['id']}))})" if len(ids) > 1 else ""
                verdict.unlisted.append(f"{name} {dependency['version']}: {vuln['id']}{also}; fixed in: {fixed}")
    verdict.stale = [e for e in allowlist if e.package in audited_packages and (e.package, e.id) not in reported]
    return verdict


def run_pip_audit() -> dict[str, Any]:
    """pip-audit's JSON report on the lock file, or a skip when PyPI could not be reached at all."""
    assert PIP_AUDIT.exists(), f"{PIP_AUDIT} is missing: pip-audit is a dev dependency (pip install -e '.[dev]')"
    command = [str(PIP_AUDIT), "-s", "pypi", "--no-deps", "--disable-pip", "-r", str(LOCK_FILE)]
    command += ["-f", "json", "--progress-spinner", "off", "--timeout", "30"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    # Exit status 1 also means "vulnerabilities found"; the JSON report is what counts.
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        last = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
        if "requests.exceptions." in result.stderr:
            pytest.skip(f"advisory service unreachable from this machine: {last[0][:300]}")
        pytest.fail(f"pip-audit exited {result.returncode} without a report:\n{result.stderr[-3000:]}")
    return report


def test_locked_dependencies_have_no_unlisted_advisories() -> None:
    verdict = judge(run_pip_audit(), load_allowlist(ALLOWLIST))
    unaudited = verdict.unaudited_reason()
    if unaudited is not None:
        pytest.skip(unaudited)
    if verdict.skipped:
        print(f"\npip-audit could not audit {len(verdict.skipped)} of {verdict.total} packages:")
        for name, reason in sorted(verdict.skipped.items()):
            print(f"  {name}: {reason}")
    for entry in verdict.stale:
        warnings.warn(
            f"{ALLOWLIST.name}: {entry.package} {entry.id} is no longer reported; remove the entry", stacklevel=1
        )
    assert not verdict.unlisted, (
        f"{len(verdict.unlisted)} known vulnerabilities in {LOCK_FILE.name} are not in {ALLOWLIST.name}; "
        "take a fixed version, or list each there with the reason it is accepted:\n  " + "\n  ".join(verdict.unlisted)
    )


# The judging, on made-up reports in pip-audit's JSON format.


def _dependency(name: str, *vulns: tuple[str, list[str]]) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1.0",
        "vulns": [{"id": id_, "fix_versions": ["1.1"], "aliases": aliases} for id_, aliases in vulns],
    }


def test_an_unlisted_advisory_is_reported_and_a_listed_one_is_not() -> None:
    report = {
        "dependencies": [
            _dependency("Some_Package", ("PYSEC-1", ["CVE-1"]), ("GHSA-2", [])),
            _dependency("other", ("GHSA-3", [])),
            {"name": "not-on-pypi", "skip_reason": "Dependency not found on PyPI and could not be audited"},
        ],
        "fixes": [],
    }
    allowlist = [
        Allowed(id="CVE-1", package="some-package", reason="r"),
        Allowed(id="GHSA-9", package="other", reason="r"),
    ]
    verdict = judge(report, allowlist)
    assert verdict.unaudited_reason() is None
    assert verdict.unlisted == [
        "some-package 1.0: GHSA-2; fixed in: 1.1",
        "other 1.0: GHSA-3; fixed in: 1.1",
    ]
    assert verdict.stale == [allowlist[1]]
    assert verdict.skipped == {"not-on-pypi": "Dependency not found on PyPI and could not be audited"}


def test_an_audit_that_skipped_most_packages_vouches_for_nothing() -> None:
    skipped = "Dependency not found on PyPI and could not be audited: x (1.0)"
    report = {
        "dependencies": [_dependency("a"), *({"name": f"p{i}", "skip_reason": skipped} for i in range(3))],
        "fixes": [],
    }
    reason = judge(report, []).unaudited_reason()
    assert reason == (
        "advisory service unreachable from this machine: 3 of 4 packages could not be audited "
        "(Dependency not found on PyPI and could not be audited)"
    )
    assert judge({"dependencies": [], "fixes": []}, []).unaudited_reason() == "pip-audit reported no packages at all"


def test_the_allowlist_is_well_formed(tmp_path: Path) -> None:
    load_allowlist(ALLOWLIST)
    bad = tmp_path / "allowlist.toml"
    bad.write_text('[[ignore]]\nid = "GHSA-1"\npackage = "x"\nreason = " "\n')
    with pytest.raises(AssertionError, match="non-empty"):
        load_allowlist(bad)
    bad.write_text('[[ignore]]\nid = "GHSA-1"\npackage = "x"\n')
    with pytest.raises(AssertionError, match="needs exactly"):
        load_allowlist(bad)
