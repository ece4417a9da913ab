"""HTTP tests against a real ``topkrec serve`` process on loopback (started here, always stopped)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from topkrec.serve.recommender import Recommender
from topkrec.serve.synthetic import make_random_model

N_USERS, N_ITEMS = 30, 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, impressions: Path, model: Path) -> None:
        self.url, self.proc, self.impressions, self.model = url, proc, impressions, model
        self.client = httpx.Client(base_url=url, timeout=30)

    def post(self, path: str, body: object = None, content: bytes | None = None) -> httpx.Response:
        if content is not None:
            return self.client.post(path, content=content, headers={"content-type": "application/json"})
        return self.client.post(path, json=body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    model = make_random_model(root / "model", n_users=N_USERS, n_items=N_ITEMS, hist_num=4, seed=1)
    impressions = root / "impressions.jsonl"
    port = free_port()
    cmd = [sys.executable, "-m", "topkrec", "serve", "--model", str(model), "--port", str(port)]
    cmd += ["--log-impressions", str(impressions), "--device", "cpu", "--max-body-bytes", "20000"]
    cmd += ["--max-history", "50"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    srv = Server(url, proc, impressions, model)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"server exited with {proc.returncode}: {out}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server did not come up in 90 s")
            time.sleep(0.2)
        yield srv
    finally:
        srv.client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture(scope="module")
def local(server: Server) -> Recommender:
    return Recommender.load(server.model, device="cpu")


def test_recommend_answers_the_design_shape(server: Server, local: Recommender) -> None:
    r = server.post("/recommend", {"user": "u3", "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [set(x) for x in body["items"]] == [{"item", "score", "propensity"}] * 5
    expected = local.recommend(user="u3", k=5)
    assert [x["item"] for x in body["items"]] == expected.items
    np.testing.assert_allclose([x["score"] for x in body["items"]], expected.scores, rtol=1e-5, atol=1e-6)
    assert body["user_known"] is True


def test_exploration_over_http_is_seeded(server: Server, local: Recommender) -> None:
    req = {"history": ["i1", "i2"], "k": 6, "explore": True, "m": 40, "k_prime": 2, "temperature": 0.8, "seed": 5}
    a, b = server.post("/recommend", req).json(), server.post("/recommend", req).json()
    assert a == b
    expected = local.recommend(history=["i1", "i2"], k=6, explore=True, m=40, k_prime=2, temperature=0.8, seed=5)
    assert [x["item"] for x in a["items"]] == expected.items
    np.testing.assert_allclose([x["propensity"] for x in a["items"]], expected.propensities, rtol=1e-6)
    assert [x["propensity"] for x in a["items"]][:2] == [1.0, 1.0]


def test_unknown_ids_are_served_and_reported(server: Server) -> None:
    r = server.post("/recommend", {"user": "nobody", "history": ["i5", "no-such-item", 77777], "k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["user_known"] is False
    assert body["unknown_history_items"] == ["no-such-item", "77777"]
    assert len(body["items"]) == 3
    r = server.post("/recommend", {"user": 123456789, "k": 2})  # int id, unknown
    assert r.status_code == 200 and r.json()["user_known"] is False


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"user": "u1", "k": "10"}, "k"),
        ({"user": "u1", "k": 2.5}, "k"),
        ({"user": "u1", "k": 0}, "k"),
        ({"user": "u1", "k": 10**9}, "k"),
        ({"user": "u1", "k": True}, "k"),
        ({"user": ["u1"]}, "user"),
        ({"user": {"id": 1}}, "user"),
        ({"history": "i1,i2"}, "history"),
        ({"history": [["i1"]]}, "history"),
        ({"user": "u1", "exclude_seen": "yes"}, "exclude_seen"),
        ({"user": "u1", "explore": 1}, "explore"),
        ({"user": "u1", "temperature": "hot", "explore": True}, "temperature"),
        ({"user": "u1", "temperature": -1, "explore": True}, "temperature"),
        ({"user": "u1", "seed": -3, "explore": True}, "seed"),
        ({"user": "u1", "explore": True, "k": 50, "m": 10}, "m (candidate pool"),
        ({"user": "u1", "k": 5, "k_prime": 9}, "k_prime"),
        ({"user": "u1", "colour": "red"}, "colour"),
        ({"user": "x" * 300}, "user"),
        ([1, 2, 3], "body"),
        ("just a string", "body"),
    ],
)
def test_bad_requests_get_clear_4xx(server: Server, body: object, where: str) -> None:
    r = server.post("/recommend", body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err.startswith("invalid request:") and where in err


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"{", "body"),
        (b'{"user": "u1",}', "body"),
        (b"", "body"),
        (b"nul", "body"),
        (b"\xff\xfe", "body"),
        (b'{"explore": true, "temperature": NaN}', "temperature"),
        (b'{"explore": true, "temperature": Infinity}', "temperature"),
    ],
)
def test_malformed_json_is_422(server: Server, raw: bytes, where: str) -> None:
    r = server.post("/recommend", content=raw)
    assert r.status_code == 422, r.text
    assert where in r.json()["error"]


def test_size_limits(server: Server) -> None:
    r = server.post("/recommend", {"history": ["i1"] * 5000})  # > --max-body-bytes 20000
    assert r.status_code == 413 and "exceeds" in r.json()["error"]
    r = server.post("/recommend", {"history": ["i1"] * 60})  # > --max-history 50
    assert r.status_code == 400 and "at most 50" in r.json()["error"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        yield b'{"history": ['
        for _ in range(6000):
            yield b'"i1",'
        yield b'"i2"]}'

    r = server.client.post("/recommend", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds" in r.json()["error"]
    r = server.client.post("/recommend", content=b'{"user": "u1"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    assert server.client.get("/nope").json() == {"error": "Not Found"}


def test_exploration_too_costly_for_exact_propensities_is_refused(server: Server) -> None:
    r = server.post("/recommend", {"user": "u1", "explore": True, "k": 1000, "m": 10000, "k_prime": 0})
    assert r.status_code == 400 and "lower m" in r.json()["error"]
    body = {"users": ["u1"] * 1000, "explore": True, "k": 100, "m": 400, "k_prime": 50}
    r = server.post("/recommend/batch", body)
    assert r.status_code == 400 and "fewer rows" in r.json()["error"]


def test_batch_endpoint(server: Server, local: Recommender) -> None:
    users = ["u1", "u2", None, "ghost"]
    histories = [None, ["i3"], ["i4", "i5"], None]
    r = server.post("/recommend/batch", {"users": users, "histories": histories, "k": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    expected = local.recommend_batch(users, histories, k=4)
    assert [[x["item"] for x in res["items"]] for res in results] == [e.items for e in expected]
    bad = server.post("/recommend/batch", {"users": ["u1"], "histories": [["i1"], ["i2"]]})
    assert bad.status_code == 400 and "same length" in bad.json()["error"]
    assert server.post("/recommend/batch", {"k": 3}).status_code == 400
    assert server.post("/recommend/batch", {"users": "u1"}).status_code == 422


def test_concurrent_requests_are_batched_and_match_single_answers(server: Server, local: Recommender) -> None:
    users = [f"u{i % N_USERS}" for i in range(96)]

    def call(u: str) -> list[str]:
        r = httpx.post(server.url + "/recommend", json={"user": u, "k": 5}, timeout=30)
        assert r.status_code == 200
        return [x["item"] for x in r.json()["items"]]

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(call, users))
    assert got == [local.recommend(user=u, k=5).items for u in users]
    health = server.client.get("/health").json()
    assert health["status"] == "ok" and health["requests_scored"] >= 96


def test_health_model_and_docs(server: Server) -> None:
    assert server.client.get("/health").json()["n_items"] == N_ITEMS
    info = server.client.get("/model").json()
    assert info["n_items"] == N_ITEMS and info["n_users"] == N_USERS and info["has_user_histories"] is True
    spec = server.client.get("/openapi.json").json()
    assert {"/recommend", "/recommend/batch", "/health", "/model"} <= set(spec["paths"])
    assert server.client.get("/docs").status_code == 200
    assert server.client.get("/nope").status_code == 404
    assert server.client.get("/recommend").status_code == 405


def test_impressions_are_logged_in_events_format(server: Server) -> None:
    server.post("/recommend", {"user": "u9", "k": 3, "explore": True, "m": 20, "seed": 1})
    time.sleep(0.2)
    rows = [json.loads(line) for line in server.impressions.read_text().splitlines()]
    mine = [r for r in rows if r["user"] == "u9" and r["explore"]]
    assert len(mine) >= 3
    last = mine[-3:]
    assert {"user", "item", "event", "timestamp", "propensity", "score", "position", "request_id"} <= set(last[0])
    assert [r["position"] for r in last] == [0, 1, 2] and len({r["request_id"] for r in last}) == 1
    assert all(0 < r["propensity"] <= 1 for r in last) and all(r["event"] == "impression" for r in last)


def test_random_garbage_never_gives_500(server: Server) -> None:
    rng = np.random.default_rng(0)
    values: list[object] = [None, True, -1, 0, 1, 3.5, 1e308, "", "u1", [], [1, "a"], {}, {"a": 1}, "i" * 10]
    keys = ["user", "history", "k", "exclude_seen", "explore", "m", "k_prime", "temperature", "seed"]
    for _ in range(60):
        body = {str(rng.choice(keys)): values[int(rng.integers(len(values)))] for _ in range(int(rng.integers(1, 5)))}
        for path in ("/recommend", "/recommend/batch"):
            r = server.post(path, body)
            assert r.status_code < 500, (path, body, r.text)


@pytest.mark.slow
def test_two_worker_processes_serve_and_share_the_impressions_log(tmp_path: Path) -> None:
    model = make_random_model(tmp_path / "model", n_users=5, n_items=50, hist_num=2, seed=4)
    log = tmp_path / "imp.jsonl"
    port = free_port()
    cmd = [sys.executable, "-m", "topkrec", "serve", "--model", str(model), "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen([*cmd, "--log-impressions", str(log), "--device", "cpu"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "server exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(
                    lambda i: (
                        httpx.post(
                            f"http://127.0.0.1:{port}/recommend", json={"user": f"u{i % 5}", "k": 3}, timeout=30
                        ).status_code
                    ),
                    range(40),
                )
            )
        assert codes == [200] * 40
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(rows) == 120 and len({r["request_id"] for r in rows}) == 40
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
