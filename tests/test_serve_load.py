"""The serving load test (bench/serve_load.py): its pure parts (the clients' reports parsed, nearest-rank
percentiles, the issue's ratios and targets, the summary table, the request bodies, the open-loop client's HTTP
reading), its clients against a small real HTTP server on a loopback port (wrk with bench/wrk_post.lua, and
bench/open_loop.py, both with their CPU measured), and, where wrk and the peer's packages are installed, a
2-second run at one connection against the sentence-transformers peer (bench/st_server.py) and a tiny run of
the whole load test against `bortengine serve`.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import open_loop  # noqa: E402
import serve_load  # noqa: E402
from serve_processes import (ServerProcess, child_env, free_port, http_json, open_loop_argv,  # noqa: E402
                             run_client, wrk_argv)
from serve_report import (ENGINE, MARKER, PEER, ClientReportMissing, Level, comparisons,  # noqa: E402
                          config_summary, latency_summary_us, level_from_report, level_table,
                          parse_client_report, ratio, targets)

HAVE_WRK = shutil.which("wrk") is not None
PEER_PACKAGES = all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn", "sentence_transformers", "psutil"))

# what wrk_post.lua's done() prints (field for field), inside wrk's own text
WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8000/v1/embeddings
  1 threads and 4 connections
SERVE_LOAD_JSON {"client": "wrk", "duration_us": 2000000, "requests": 1000, "bytes": 123456, \
"errors": {"connect": 1, "read": 2, "write": 0, "status": 10, "timeout": 3}, \
"latency_us": {"min": 900, "max": 30000, "mean": 2500.5, "stdev": 700.0, "p50": 2000, "p90": 3000, \
"p95": 4000, "p99": 8000, "p99.9": 20000}}
  1000 requests in 2.00s, 120.56KB read
"""


def make_level(server, mode, connections, texts_per_s, p50, p99, errors=0, rate=None):
    """A Level of `texts_per_s` over 10 s (one text per request)."""
    n = int(texts_per_s * 10)
    return Level(server=server, mode=mode, connections=connections, offered_rps=rate, texts_per_request=1,
                 duration_s=10.0, requests=n + errors, status_errors=errors, socket_errors=0, timeouts=0,
                 latency_ms={"p50": p50, "p95": p99 * 0.9, "p99": p99}, client_cpu_s=0.2, server_cpu_s=19.8,
                 others_cpu_s=0.5)


INPROCESS = {"engine": {"limit": {"texts_per_s": 1000.0}, "single": {"p50_ms": 1.3},
                        "single_idle": {"p50_ms": 1.5}, "limit_lanes": {"texts_per_s": 1250.0, "callers": 2}},
             "st": {"threads": {"texts_per_s": 100.0, "callers": 32, "p50_ms": 300.0, "p99_ms": 600.0},
                    "limit": {"texts_per_s": 200.0}, "single": {"p50_ms": 12.0}}}


# -- pure parts ----------------------------------------------------------------------------------------------------
def test_the_report_line_is_found_in_wrk_output_and_read_into_a_level():
    report = parse_client_report(WRK_OUTPUT)
    level = level_from_report(report, server=ENGINE, mode="closed", texts_per_request=2, connections=4)
    assert level.duration_s == 2.0 and level.requests == 1000
    assert level.status_errors == 10 and level.socket_errors == 3 and level.timeouts == 3 and level.errors == 16
    assert level.ok == 990 and level.rps == pytest.approx(495.0) and level.texts_per_s == pytest.approx(990.0)
    assert level.latency_ms["p50"] == 2.0 and level.latency_ms["p99.9"] == 20.0
    assert level.tail_ratio == pytest.approx(4.0)
    assert Level.from_dict(json.loads(json.dumps(level.to_dict()))) == level


def test_a_client_output_without_a_report_line_says_how_it_ended():
    with pytest.raises(ClientReportMissing, match="unable to connect"):
        parse_client_report("unable to connect to 127.0.0.1:1 Connection refused\n")
    with pytest.raises(ValueError):
        level_from_report(parse_client_report(WRK_OUTPUT), server=ENGINE, mode="closed-ish", texts_per_request=1)


def test_percentiles_are_nearest_rank_as_wrk_reports_them():
    s = latency_summary_us(list(range(100, 0, -1)))  # 1..100, unordered
    assert (s["p50"], s["p90"], s["p99"], s["p99.9"], s["min"], s["max"]) == (50, 90, 99, 100, 1, 100)
    assert latency_summary_us([7.0])["p99"] == 7.0
    assert all(v is None for v in latency_summary_us([]).values())


def test_ratios_and_targets_at_32_connections():
    levels = [make_level(ENGINE, "closed", 1, 600, 1.6, 2.0), make_level(PEER, "closed", 1, 60, 16, 20),
              make_level(ENGINE, "closed", 32, 800, 40, 100), make_level(PEER, "closed", 32, 90, 350, 700),
              make_level(ENGINE, "idle", 1, 19, 1.9, 2.5)]
    comp = comparisons(levels, INPROCESS)
    assert comp["server_over_inprocess_limit"] == pytest.approx(0.8)
    assert comp["server_over_inprocess_lanes"] == pytest.approx(0.64)
    assert comp["server_over_st_threads"] == pytest.approx(8.0)
    assert comp["server_over_st_served"] == pytest.approx(800 / 90)
    assert comp["st_served_over_st_threads"] == pytest.approx(0.9)
    assert comp["p99_over_p50"] == pytest.approx(2.5) and comp["failed_requests"] == 0
    assert comp["lone_request_minus_inprocess_ms"] == pytest.approx(0.4)
    assert comp["back_to_back_minus_inprocess_ms"] == pytest.approx(0.3)
    assert comp["max_client_share"] == pytest.approx(0.01)
    assert comp["max_client_cores"] == pytest.approx(0.02) and comp["max_client_level"] == "bortengine closed c=1"
    assert [t.met for t in targets(comp, "float32")] == [True, True, True, True, True]
    # int8's goal is half the in-process limit; a failed request at 32 connections misses its target
    levels[2] = make_level(ENGINE, "closed", 32, 600, 40, 130, errors=2)
    comp = comparisons(levels, INPROCESS)
    assert [t.met for t in targets(comp, "int8")] == [True, True, False, False, True]
    assert [t.met for t in targets(comp, "float32")][0] is False


def test_missing_levels_and_references_give_no_ratio_not_a_crash():
    comp = comparisons([make_level(ENGINE, "closed", 4, 500, 5, 9)], {})
    assert comp["server_over_inprocess_limit"] is None and comp["lone_request_minus_inprocess_ms"] is None
    assert all(t.met is None for t in targets(comp, "float32"))
    assert "not measured" in targets(comp, "float32")[0].line()
    assert ratio(1.0, 0.0) is None and ratio(None, 2.0) is None and ratio(3.0, 2.0) == 1.5


def test_the_summary_names_every_level_the_ratios_and_the_verdicts():
    levels = [make_level(ENGINE, "closed", 32, 800, 40, 100), make_level(PEER, "closed", 32, 90, 350, 700),
              make_level(ENGINE, "open", None, 400, 3, 9, rate=400.0)]
    table = level_table(levels)
    assert table.count("\n") == 4 and "c=32" in table and "400/s" in table and "sentence-transformers" in table
    config = {"dtype": "float32", "texts": "reviews", "threads": 2, "inprocess": INPROCESS,
              "text_stats": {"count": 854, "tokens_median": 26.0}, "levels": [lv.to_dict() for lv in levels]}
    text = config_summary(config)
    assert "closed c=32 8.89x" in text and "854 texts" in text
    assert "throughput / in-process limit: 0.8 (target >= 0.75) ok" in text
    assert "lone request on an idle server minus in-process call, ms: not measured" in text
    assert "load generator: at most 0.020 cores (bortengine closed c=32), at most 1.0% of client + server" in text


def test_bodies_hold_the_texts_in_turn_as_openai_requests(tmp_path):
    path = serve_load.write_bodies(tmp_path / "b.jsonl", ["a", 'he said "hi"\nthen left', "c", "d", "e"], "m", 2)
    bodies = [json.loads(line) for line in path.read_text().splitlines()]
    assert bodies == [{"input": ["a", 'he said "hi"\nthen left'], "model": "m"}, {"input": ["c", "d"], "model": "m"}]


def test_options_are_checked():
    args = serve_load.parse_args(["--model", "/m", "--dtype", "float32,int8", "--levels", "1,32", "--rates", "50"])
    assert args.dtypes == ["float32", "int8"] and args.levels == [1, 32] and args.rates == [50.0]
    for bad in (["--dtype", "fp16"], ["--levels", "0"], ["--duration", "0"]):
        with pytest.raises(SystemExit):
            serve_load.parse_args(["--model", "/m", *bad])


def test_open_loop_reads_http_answers_whole_and_only_whole():
    one = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: application/json\r\n\r\n[1,2]"
    assert open_loop.parse_response(one[:-1]) is None
    assert open_loop.parse_response(one[:20]) is None
    assert open_loop.parse_response(one) == (200, len(one))
    two = one + b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\nRetry-After: 1\r\n\r\n{}"
    assert open_loop.parse_response(two) == (200, len(one))
    assert open_loop.parse_response(two[len(one):]) == (429, len(two) - len(one))
    with pytest.raises(open_loop.ProtocolError):
        open_loop.parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n")


# -- the clients against a real loopback server ------------------------------------------------------------------
# a keep-alive JSON server of the standard library: 200 with the texts' count, 500 when a text says "fail"
ECHO_SERVER = textwrap.dedent("""
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body go out in two writes: with Nagle's algorithm the body waited for the client's delayed
        # ACK of the headers (40 ms), and an unpaced second of wrk got ~46 answers instead of thousands
        disable_nagle_algorithm = True

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply(200, {"status": "ok"})

        def do_POST(self):
            texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["input"]
            self.reply(500 if "fail" in texts else 200, {"data": [{"index": i} for i in range(len(texts))]})

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
""")


@pytest.fixture()
def echo_server(tmp_path):
    port = free_port()
    server = ServerProcess("echo", [sys.executable, "-c", ECHO_SERVER, str(port)], port, tmp_path / "echo.log")
    try:
        server.wait_ready(60)
        yield server
    finally:
        server.stop()


@pytest.fixture()
def bodies(tmp_path):
    return serve_load.write_bodies(tmp_path / "bodies.jsonl", ["ok"] * 9 + ["fail"], "m", 1)


@pytest.mark.skipif(not HAVE_WRK, reason="wrk is not installed (bash bench/setup_serve_load.sh installs it)")
@pytest.mark.parametrize("pause_ms", [0, 20])
def test_wrk_with_the_lua_script_reports_requests_errors_and_its_cpu(echo_server, bodies, pause_ms):
    url = echo_server.base_url + "/v1/embeddings"
    run = run_client(wrk_argv(url, bodies, 2, 1, 1, 10, pause_ms=pause_ms), echo_server, [echo_server], 60)
    level = level_from_report(run.report, server="echo", mode="closed", texts_per_request=1, connections=2)
    assert level.requests > 10 and level.socket_errors == 0 and level.timeouts == 0
    # one body in ten fails: the rotation sends each body in turn
    assert level.status_errors == pytest.approx(level.requests / 10, abs=3)
    assert 0 < level.latency_ms["p50"] <= level.latency_ms["p99"] <= level.latency_ms["max"]
    if pause_ms:  # two connections pausing 20 ms: at most ~100 requests a second
        assert level.requests <= 2 * 1.2 / 0.020
    assert run.client_cpu_s >= 0 and run.server_cpu_s >= 0 and run.others_cpu_s is not None
    # the process CPU times count in clock ticks (10 ms): the paced run's ~40 echoes may take less than one (seen:
    # 0.0 on a fresh clone's CI), the unpaced run's thousands cannot
    assert run.server_cpu_s > 0 or pause_ms


def test_open_loop_client_offers_its_rate_and_reports_like_wrk(echo_server, bodies):
    url = echo_server.base_url + "/v1/embeddings"
    run = run_client(open_loop_argv(url, bodies, 40, 1, 10), echo_server, [echo_server], 60)
    level = level_from_report(run.report, server="echo", mode="open", texts_per_request=1, offered_rps=40)
    assert level.requests == 40 and level.status_errors == 4 and level.not_sent == 0 and level.timeouts == 0
    assert level.rps == pytest.approx(36, rel=0.15)
    assert level.lag_ms["p50"] < 20 and level.latency_ms["p50"] > 0
    assert 0 < run.client_cpu_s < 5  # the run's own CPU, the interpreter's start-up left out


def test_a_client_that_cannot_connect_is_an_error_with_its_output(echo_server, bodies):
    with pytest.raises(serve_load.LoadTestError, match="exited with code"):
        run_client([sys.executable, "-c", "print('no report'); raise SystemExit(3)"], echo_server, [echo_server], 60)


# -- the real servers ----------------------------------------------------------------------------------------------
def serve_command_exists() -> bool:
    proc = subprocess.run([sys.executable, "-m", "bortengine", "serve", "--help"], capture_output=True,
                          env=child_env())
    return proc.returncode == 0


@pytest.mark.skipif(not HAVE_WRK, reason="wrk is not installed (bash bench/setup_serve_load.sh installs it)")
@pytest.mark.skipif(not PEER_PACKAGES, reason="the peer needs starlette, uvicorn and sentence-transformers "
                    "(pip install -e '.[bench]')")
def test_two_seconds_at_one_connection_against_the_sentence_transformers_peer(tmp_path, monkeypatch):
    from bortengine.testing import minilm_path

    args = serve_load.parse_args(["--threads", "1"])
    monkeypatch.setattr(serve_load, "WORK_DIR", tmp_path)
    peer = serve_load.start_peer_server(args)
    try:
        texts = ["a quiet film about loud people", "the plot thins", "worth it"]
        import bortengine

        reference = bortengine.load(minilm_path(), num_threads=1).encode(texts).tolist()
        check = serve_load.check_answers(peer, texts, reference, "m", exact=False)
        assert check["min_cosine"] > 0.999 and check["prompt_tokens"] > len(texts)
        assert http_json(peer.base_url + "/v1/embeddings", {"input": []})[0] == 400
        body_file = serve_load.write_bodies(tmp_path / "bodies.jsonl", texts, "m", 1)
        run = run_client(wrk_argv(peer.base_url + "/v1/embeddings", body_file, 1, 2, 1, 30), peer, [peer], 120)
        level = level_from_report(run.report, server=PEER, mode="closed", texts_per_request=1, connections=1)
        assert level.ok > 0 and level.errors == 0
        assert run.client_cpu_s < run.server_cpu_s
    finally:
        peer.stop()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_WRK, reason="wrk is not installed (bash bench/setup_serve_load.sh installs it)")
@pytest.mark.skipif(not PEER_PACKAGES, reason="the peer needs starlette, uvicorn and sentence-transformers")
def test_the_whole_load_test_at_a_tiny_load(tmp_path, monkeypatch):
    if not serve_command_exists():
        pytest.skip("`python -m bortengine serve` does not exist in this tree yet")
    monkeypatch.setattr(serve_load, "WORK_DIR", tmp_path / "work")
    out = tmp_path / "out"
    code = serve_load.main(["--levels", "1", "--duration", "1", "--warmup", "1", "--level-warmup", "0",
                            "--rates", "5", "--inprocess-seconds", "0.3", "--st-callers", "2", "--threads", "1",
                            "--out", str(out)])
    assert code == 0
    result = json.loads((out / "serve_load.json").read_text())
    (config,) = result["configs"]
    kinds = {(lv["server"], lv["mode"]) for lv in config["levels"]}
    assert kinds == {(s, m) for s in (ENGINE, PEER) for m in ("closed", "idle", "open")}
    assert all(lv["errors"] == 0 and lv["ok"] > 0 for lv in config["levels"])
    assert config["check"][ENGINE]["max_abs_diff"] <= serve_load.ENGINE_ATOL
    assert (out / "serve_load.png").stat().st_size > 10_000
    assert MARKER.strip() not in (out / "serve_load.json").read_text()


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn", "uvloop", "orjson")),
                    reason="the floor servers need starlette, uvicorn, uvloop and orjson (pip install -e '.[serve]')")
@pytest.mark.parametrize("kind", ["stack", "loopback"])
def test_the_floor_servers_answer_an_embedding_per_request_even_pipelined(tmp_path, kind):
    import socket

    port = free_port()
    server = ServerProcess(kind, [sys.executable, str(BENCH / "serve_floor.py"), kind, "--port", str(port), "--dim",
                                  "7"], port, tmp_path / f"{kind}.log")
    try:
        server.wait_ready(60)
        status, answer = http_json(server.base_url + "/v1/embeddings", {"input": "a query", "model": "m"})
        assert status == 200 and len(answer["data"][0]["embedding"]) == 7
        body = b'{"input": "x"}'
        one = (b"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(one[:20])  # a request split across reads, then two more in one write
            sock.sendall(one[20:] + one + one)
            seen = b""
            while seen.count(b"HTTP/1.1 200") < 3 or not seen.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, f"the {kind} server closed the connection after {seen.count(b'HTTP/1.1 200')} answers"
                seen += chunk
        assert seen.count(b"HTTP/1.1 200") == 3
        if HAVE_WRK:
            bodies = tmp_path / "bodies.jsonl"
            bodies.write_text('{"input": "a", "model": "m"}\n')
            run = run_client(wrk_argv(server.base_url + "/v1/embeddings", bodies, 2, 1, 1, 30), server, [server], 60)
            level = level_from_report(run.report, server=kind, mode="closed", texts_per_request=1, connections=2)
            assert level.ok > 0 and level.errors == 0
    finally:
        server.stop()


def test_the_batch_token_bench_measures_every_size_on_real_texts(tmp_path):
    import batch_tokens

    import bortengine
    from bortengine.testing import make_random_bert

    model = make_random_bert(tmp_path / "m", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64)
    engine = bortengine.load(str(model), num_threads=1, batching=False)
    rows = batch_tokens.measure(engine, batch_tokens.text_set("reviews", engine), sizes=(1, 4), rounds=2)
    assert [r["batch"] for r in rows] == [1, 4]
    assert rows[0]["speedup_over_batch_1"] == 1.0 and all(r["ms"] > 0 and r["tokens"] >= r["batch"] for r in rows)
    assert rows[1]["tokens"] > rows[0]["tokens"]
