"""Invoke token mint (worker, every invocation) and verify (gateway, every call a function
makes), beside a raw one-shot HMAC-SHA256 of the same bytes.

Not a test: prints figures and ratios measured in the same run on this machine.

    .venv/bin/python bench/tokens.py [--n 200000]
"""

from __future__ import annotations

import argparse
import hmac
import secrets
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import Result, Row
from shared import tokens
from shared.protocol import FunctionSpec, Lineage
from worker.credentials import TokenIssuer


def best_us(fn: object, n: int) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6  # type: ignore[arg-type]


def measure(n: int) -> tuple[int, float, float, float]:
    """Token length, and microseconds per raw HMAC, mint and verify (best of 5 runs)."""
    secret = secrets.token_urlsafe(32).encode()
    spec = FunctionSpec(tenant="tenant-abcdef12", service="svc_abcdef12", function="fn_abcdef12")
    lineage = Lineage(trace_id="3f2a9c1e-7b6d-4e1f-9a2b-1234567890ab", hops=3, origin="http")
    issuer = TokenIssuer(secret, "http://127.0.0.1:9000")
    deadline = time.time() + 30
    token = issuer.token(spec, lineage, deadline)
    signed = token.rpartition(".")[0].encode()
    raw = best_us(lambda: hmac.digest(secret, signed, "sha256"), n)
    mint = best_us(lambda: issuer.token(spec, lineage, deadline), n)
    now = time.time()
    verify = best_us(lambda: tokens.verify(secret, token, now), n)
    return len(token), raw, mint, verify


def run(n: int = 200_000) -> Result:
    _, raw, mint, verify = measure(n)
    hmac_name = "raw hmac.digest"
    rows = [
        Row("invoke token mint", mint, "us", raw, hmac_name, bench="tokens"),
        Row("invoke token verify", verify, "us", raw, hmac_name, bench="tokens"),
    ]
    return Result(rows=rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    length, raw, mint, verify = measure(parser.parse_args().n)
    print(f"token: {length} characters")
    print(f"raw hmac.digest(sha256) of the signed part: {raw:.2f} us")
    print(f"mint (TokenIssuer.token):                   {mint:.2f} us  ({mint / raw:.1f}x raw)")
    print(f"verify (shared.tokens.verify):              {verify:.2f} us  ({verify / raw:.1f}x raw)")


if __name__ == "__main__":
    main()
