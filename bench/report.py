"""Turn pytest-benchmark JSON files into the markdown tables of bench/README.md.

    pytest bench/ --benchmark-only --benchmark-json=run.json
    python bench/report.py run.json [more.json ...] > table.md

Each row is one benchmark with its throughput (``*_per_s`` in ``extra_info``,
computed from the median round) and the machine the run names.
"""
from __future__ import annotations

import json
import sys


def rows(path: str):
    data = json.load(open(path))
    m = data.get("machine_info", {})
    machine = f"{m.get('cpu', {}).get('brand_raw', m.get('processor', '?'))}, " \
              f"{m.get('cpu', {}).get('count', '?')} cores, Python {m.get('python_version', '?')}"
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        rates = {k[:-6]: v for k, v in info.items() if k.endswith("_per_s") and isinstance(v, (int, float))}
        # the unit whose count the benchmark recorded (``throughput(benchmark, count, unit=...)``)
        unit = next((u for u in rates if u in info), next(iter(rates), ""))
        rate = rates.get(unit, float("nan"))
        extra = {k: v for k, v in info.items() if not k.endswith("_per_s") and k != unit}
        yield machine, b["fullname"].split("::")[0], b["name"], unit, rate, b["stats"]["median"], extra


def main(paths: list[str]) -> None:
    machines = set()
    current = None
    for machine, module, name, unit, rate, median, extra in (r for p in paths for r in rows(p)):
        machines.add(machine)
        if module != current:
            current = module
            print(f"\n**{module}**\n\n| benchmark | rate | median round | details |\n|---|---:|---:|---|")
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        shown_rate = f"{rate / 1e6:,.2f} M {unit}/s" if rate >= 1e5 else f"{rate:,.0f} {unit}/s"
        print(f"| `{name}` | {shown_rate} | {median * 1e3:,.1f} ms | {shown} |")
    print("\nMachine: " + "; ".join(sorted(machines)))


if __name__ == "__main__":
    main(sys.argv[1:])
