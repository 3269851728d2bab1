"""The cluster-wide /metrics fold: Ray agents' expositions (one series per process, Ray's
labels) in, one series per catalogue label set out, parsed back by prometheus_client."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from observability import catalogue
from observability.exposition import MetricsSource, fold, our_lines, render, scrape

RAY_LABELS = ('Component="core_worker",NodeAddress="{node}",SessionName="session_x",Version="2.60.0",'
              'WorkerId="{worker}",otel_scope_name="ray._private.telemetry",otel_scope_version=""')


def _agent(node: str, workers: dict[str, dict[str, float]]) -> str:
    """What a node's Ray metrics agent exports: Ray's own families and ours, per worker."""
    lines = ["# HELP ray_node_cpu_utilization cpu", "# TYPE ray_node_cpu_utilization gauge",
             f'ray_node_cpu_utilization{{NodeAddress="{node}"}} 12.0',
             "# HELP ray_hf_server_requests_total reqs", "# TYPE ray_hf_server_requests_total counter"]
    for worker, values in workers.items():
        ray = RAY_LABELS.format(node=node, worker=worker)
        lines.append(f'ray_hf_server_requests_total{{{ray},endpoint="/v1/chat/completions",key_id="",model="m",status="200"}} {values["ok"]}')
        lines.append(f'ray_hf_server_requests_total{{{ray},endpoint="/v1/chat/completions",key_id="",model="m",status="429"}} {values["limited"]}')
    lines += ["# HELP ray_hf_server_request_duration_seconds dur", "# TYPE ray_hf_server_request_duration_seconds histogram"]
    for worker, values in workers.items():
        ray = RAY_LABELS.format(node=node, worker=worker)
        for le, count in (("0.1", values["fast"]), ("1.0", values["ok"]), ("+Inf", values["ok"])):
            lines.append(f'ray_hf_server_request_duration_seconds_bucket{{{ray},endpoint="/v1/chat/completions",le="{le}",model="m"}} {count}')
        lines.append(f'ray_hf_server_request_duration_seconds_count{{{ray},endpoint="/v1/chat/completions",model="m"}} {values["ok"]}')
        lines.append(f'ray_hf_server_request_duration_seconds_sum{{{ray},endpoint="/v1/chat/completions",model="m"}} {values["ok"] * 0.2}')
    lines += ["# HELP ray_hf_server_circuit_breaker_state b", "# TYPE ray_hf_server_circuit_breaker_state gauge"]
    for worker, values in workers.items():
        lines.append(f'ray_hf_server_circuit_breaker_state{{{RAY_LABELS.format(node=node, worker=worker)},model="m"}} {values["breaker"]}')
    return "\n".join(lines) + "\n"


HEAD = _agent("10.0.0.1", {"w1": {"ok": 3, "limited": 1, "fast": 2, "breaker": 0}, "w2": {"ok": 4, "limited": 0, "fast": 1, "breaker": 2}})
WORKER = _agent("10.0.0.2", {"w3": {"ok": 5, "limited": 2, "fast": 5, "breaker": 1}})


def _parsed(text: bytes) -> dict[str, dict[tuple, float]]:
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_series_of_every_process_on_every_node_add_up():
    samples = _parsed(render(fold([HEAD, WORKER])))
    requests = samples["hf_server_requests_total"]
    base = (("endpoint", "/v1/chat/completions"), ("model", "m"))
    assert requests[(*base, ("status", "200"))] == 12  # 3 + 4 + 5: every ingress replica on both nodes
    assert requests[(*base, ("status", "429"))] == 3
    assert samples["hf_server_request_duration_seconds_count"][base] == 12
    buckets = samples["hf_server_request_duration_seconds_bucket"]
    assert buckets[tuple(sorted((*base, ("le", "0.1"))))] == 8
    assert buckets[tuple(sorted((*base, ("le", "+Inf"))))] == 12


def test_ray_labels_and_empty_labels_are_dropped_and_ray_metrics_are_not_served():
    text = render(fold([HEAD])).decode()
    assert "WorkerId" not in text and "NodeAddress" not in text and "otel_scope" not in text
    assert "key_id" not in text  # opt-in: empty unless an operator asks for key ids
    assert "ray_" not in text and "node_cpu" not in text


def test_a_state_gauge_takes_the_largest_value_not_the_sum():
    samples = _parsed(render(fold([HEAD, WORKER])))
    assert samples["hf_server_circuit_breaker_state"][(("model", "m"),)] == 2


def test_every_catalogue_family_is_listed_with_its_help_even_before_any_sample():
    families = {f.name: f for f in text_string_to_metric_families(render(fold([])).decode())}
    for spec in catalogue.CATALOGUE:
        name = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
        assert families[name].type == spec.kind and families[name].documentation == spec.help


def test_only_our_lines_are_parsed():
    assert "ray_node_cpu_utilization" not in our_lines(HEAD)
    assert our_lines(HEAD).count("ray_hf_server_requests_total{") == 4


def test_a_series_with_a_label_of_another_shape_is_ignored_not_crashed_on():
    odd = "# TYPE ray_hf_server_requests_total gauge\nray_hf_server_requests_total{model=\"m\"} 5\n"
    samples = _parsed(render(fold([odd, HEAD])))
    assert sum(samples["hf_server_requests_total"].values()) == 8  # the odd family (wrong type) is skipped


def test_scrape_gathers_every_node_and_names_one_that_does_not_answer():
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "10.0.0.3":
            raise httpx.ConnectError("refused")
        return httpx.Response(200, text=HEAD if request.url.host == "10.0.0.1" else WORKER)

    sources = [MetricsSource(node, f"http://{ip}:9000/metrics") for node, ip in (("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3"))]

    async def scrape_all():
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            return await scrape(sources, client)

    text, missing = asyncio.run(scrape_all())
    assert missing == ["c"]
    assert sum(_parsed(text)["hf_server_requests_total"].values()) == 15


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


async def until(condition, timeout_s: float = 5.0) -> None:
    """Turns of the loop (and of the thread that lists the nodes) until `condition` holds."""
    for _ in range(int(timeout_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met")


def test_scrapes_answer_from_the_latest_gather_and_gathers_follow_the_refresh_period():
    from observability.exposition import ClusterScraper

    clock, listed = _Clock(), []

    def sources():
        listed.append(clock.now)
        return [MetricsSource("a", "http://10.0.0.1:9000/metrics")]

    async def run():
        async def no_wait(_seconds):  # the fake clock moves; the task only needs its turns
            await asyncio.sleep(0)

        scraper = ClusterScraper(sources, refresh_s=10.0, idle_s=60.0, clock=clock, sleep=no_wait)
        scraper._client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, text=HEAD)))
        first = await scraper.exposition()  # nothing to serve yet: it waits for a gather
        assert scraper.gathers == 1 and b"hf_server_requests_total" in first
        clock.now += 3
        assert await scraper.exposition() == first and scraper.gathers == 1  # answered from the last gather
        clock.now += 8  # past the period: the background task gathers again
        await until(lambda: scraper.gathers == 2)
        clock.now += 100  # nobody scraped for longer than idle_s: the task stops
        await until(lambda: scraper._keeper.done())
        gathers = scraper.gathers
        assert gathers == 2
        clock.now += 1
        await scraper.exposition()  # stale after idling: a fresh gather before answering
        assert scraper.gathers == gathers + 1
        await scraper.close()

    asyncio.run(run())
