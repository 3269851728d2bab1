"""The cluster-wide `/metrics`: hfserve's families gathered from every Ray node's metrics agent.

Each agent exports its node's processes' series, one per process, with Ray's prefix and labels
(WorkerId, NodeAddress...). Here they are folded over those labels (summed, or the largest for a
state or ratio: the spec's `combine`), so N requests through any replica read as N; values lag by
up to Ray's report interval (`metrics_report_interval_ms`). Only our families' lines are parsed:
an agent exports a few hundred kilobytes, mostly Ray's own, and a scrape must stay cheap.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from .catalogue import BY_RAY_NAME, CATALOGUE, RAY_PREFIX, MetricSpec

logger = logging.getLogger("ray.serve")

OUR_PREFIX = RAY_PREFIX + "hf_server_"
# The classic text format that generate_latest writes, which every Prometheus since 2.0 reads
# (prometheus_client's CONTENT_TYPE_LATEST names 1.0.0, which older servers do not know).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
SCRAPE_TIMEOUT_S = 3.0
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


@dataclass(frozen=True)
class MetricsSource:
    """One node's metrics agent."""

    node: str
    url: str


# Ray's per-process labels, cut before parsing: prometheus_client's parser reads labels one
# character at a time, and these are most of each line (they are dropped in the fold anyway).
_RAY_LABELS = re.compile(r'(?<=[{,])(?:Component|NodeAddress|SessionName|Version|WorkerId|JobId|otel_scope_[a-z_]+)="[^"]*",?')


def our_lines(text: str) -> str:
    """The lines of hfserve's families (samples, HELP and TYPE) in an agent's exposition,
    without Ray's per-process labels."""
    lines = "\n".join(line for line in text.splitlines() if OUR_PREFIX in line[:64])
    return _RAY_LABELS.sub("", lines).replace(",}", "}") + "\n"


def fold(expositions: Iterable[str]) -> dict[str, dict[SeriesKey, float]]:
    """Every catalogue family's samples over all expositions, Ray's labels dropped and the
    series of the many processes combined; keyed by spec name."""
    folded: dict[str, dict[SeriesKey, float]] = defaultdict(dict)
    for text in expositions:
        for family in text_string_to_metric_families(our_lines(text)):
            spec = _spec_of(family.name, family.type)
            if spec is None:
                continue
            keep = set(spec.labels) | ({"le"} if spec.kind == "histogram" else set())
            valid = {spec.ray_name.removesuffix("_total") + s if spec.kind == "counter" else spec.ray_name + s
                     for s in _SUFFIXES[spec.kind]}
            series = folded[spec.name]
            for sample in family.samples:
                if sample.name not in valid:
                    continue  # e.g. _created: not ours to serve
                name = sample.name.removeprefix(RAY_PREFIX)
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k in keep and v != ""))
                key = (name, labels)
                if key not in series:
                    series[key] = sample.value
                elif spec.combine == "max":
                    series[key] = max(series[key], sample.value)
                else:
                    series[key] += sample.value
    return folded


def _spec_of(family_name: str, family_type: str) -> MetricSpec | None:
    # prometheus_client's parser names a counter family without its _total.
    name = family_name + "_total" if family_type == "counter" else family_name
    spec = BY_RAY_NAME.get(name)
    return spec if spec is not None and spec.kind == family_type else None


class _Folded:
    """A prometheus_client collector over folded samples: every catalogue family is listed,
    with its help text, even before anything was recorded."""

    def __init__(self, folded: dict[str, dict[SeriesKey, float]]):
        self._folded = folded

    def collect(self):
        for spec in CATALOGUE:
            family = Metric(spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name, spec.help, spec.kind)
            for (name, labels), value in sorted(self._folded.get(spec.name, {}).items(), key=_sample_order):
                family.add_sample(name, dict(labels), value)
            yield family


def _sample_order(item: tuple[SeriesKey, float]):
    (name, labels), _ = item
    plain = tuple((k, v) for k, v in labels if k != "le")
    le = dict(labels).get("le")
    return plain, name, float(le) if le is not None else 0.0


def render(folded: dict[str, dict[SeriesKey, float]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Folded(folded))  # type: ignore[arg-type]
    return generate_latest(registry)


async def scrape(sources: list[MetricsSource], client: httpx.AsyncClient) -> tuple[bytes, list[str]]:
    """The folded exposition of every source, and the nodes that did not answer (their
    series are missing from this scrape, which Prometheus sees as a dip, not a reset)."""

    async def one(source: MetricsSource) -> str | None:
        try:
            response = await client.get(source.url, timeout=SCRAPE_TIMEOUT_S)
            response.raise_for_status()
            return response.text
        except httpx.HTTPError as exc:
            logger.warning("metrics: node %s's agent at %s did not answer: %s", source.node, source.url, exc)
            return None

    texts = await asyncio.gather(*(one(source) for source in sources))
    missing = [source.node for source, text in zip(sources, texts, strict=True) if text is None]
    return render(fold(text for text in texts if text is not None)), missing


def ray_metrics_sources() -> list[MetricsSource]:
    """Every alive node's metrics agent (a GCS call: keep it off the event loop)."""
    import ray

    return [
        MetricsSource(node["NodeID"], f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics")
        for node in ray.nodes()
        if node.get("Alive") and node.get("MetricsExportPort")
    ]


class ClusterScraper:
    """What `/metrics` serves: the fold of every node's agent, kept fresh in the background.

    A node's agent changes what it exports only once per Ray report interval
    (`metrics_report_interval_ms`, 10 s by default), and producing its exposition is not cheap
    (the head's is most of a megabyte of Ray's own metrics: a quarter of a second on a busy
    small machine). So the agents are gathered once per `refresh_s` (set it to Ray's
    interval) by a background task that runs while someone scrapes, and a scrape answers with
    the latest fold at once: data as fresh as Ray's export allows, at the cost of one gather
    per interval, and nothing at all when nobody scrapes. A scrape after more than
    `3 * refresh_s` without one (the task has stopped) waits for a fresh gather.

    The node list is a GCS call: refreshed with every gather, in a thread.
    """

    def __init__(self, list_sources=ray_metrics_sources, refresh_s: float = 10.0, idle_s: float = 300.0,
                 clock=None, sleep=asyncio.sleep):
        import time

        self._list_sources = list_sources
        self._refresh_s = refresh_s
        self._idle_s = idle_s
        self._clock = clock or time.monotonic
        self._sleep = sleep
        self._client: httpx.AsyncClient | None = None
        self._latest: bytes | None = None
        self._latest_at = float("-inf")
        self._asked_at = float("-inf")
        self._keeper: asyncio.Task | None = None
        self._gathering: asyncio.Task | None = None
        self.gathers = 0  # how many times the agents were read (tests, and the cost in docs)

    async def exposition(self) -> bytes:
        self._asked_at = self._clock()
        if self._latest is None or self._clock() - self._latest_at > 3 * self._refresh_s:
            await self._gather()  # nothing recent to serve: wait for the agents
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._keep_fresh())
        assert self._latest is not None
        return self._latest

    async def _keep_fresh(self) -> None:
        while True:
            await self._sleep(max(0.0, self._latest_at + self._refresh_s - self._clock()))
            if self._clock() - self._asked_at >= self._idle_s:
                return  # nobody scrapes: the agents are left alone until somebody does
            if self._clock() - self._latest_at >= self._refresh_s:
                try:
                    await self._gather()
                except Exception:  # noqa: BLE001 - the next round retries; scrapes get the last fold
                    logger.exception("metrics: gathering the nodes' metrics failed")

    async def _gather(self) -> None:
        # One gather at a time: a scrape that finds one running waits for it.
        if self._gathering is None or self._gathering.done():
            self._gathering = asyncio.get_running_loop().create_task(self._gather_now())
        await asyncio.shield(self._gathering)

    async def _gather_now(self) -> None:
        sources = await asyncio.to_thread(self._list_sources)
        if self._client is None:
            self._client = httpx.AsyncClient()
        text, _ = await scrape(sources, self._client)
        self._latest, self._latest_at = text, self._clock()
        self.gathers += 1

    async def close(self) -> None:
        for task in (self._keeper, self._gathering):
            if task is not None:
                task.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
