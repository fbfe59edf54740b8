"""Two running services (e.g. before and after a change) and the in-process reference, in alternating rounds.

    python benchmarks/ab_rounds.py --service old=http://127.0.0.1:3410,127.0.0.1:8410 \
        --service new=http://127.0.0.1:3420,127.0.0.1:8420 [--endpoint /embedding] [--mix all] [--rounds 3]

Every round runs the reference (InsightFace in-process, as `throughput.py`) and then each service
at each client count, so machine noise on a shared host hits all alike; prints each round's
images/s, p50, the ratios to that round's reference and the CPU split (`cpu_split.py`), then the
medians. The load average is printed before and after. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from common import LFW_DIR, photo_mix
from cpu_split import CpuSplit, format_split
from throughput import measured_round, reference_pipeline, reference_round


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--service", action="append", required=True, help="name=API_URL,TRITON_HOST:PORT")
    parser.add_argument("--endpoint", default="/embedding")
    parser.add_argument("--mix", choices=["all", "groups"], default="all")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    photos = [p for p in photo_mix(LFW_DIR) if args.mix == "all" or p[0].startswith("group")]
    services = {}
    for spec in args.service:
        name, urls = spec.split("=", 1)
        api, triton = urls.split(",")
        host, port = triton.rsplit(":", 1)
        split = CpuSplit(int(api.rsplit(":", 1)[1]), f"http://{triton}", f"http://{host}:{int(port) + 2}")
        services[name] = (api, split)
    run = reference_pipeline()
    for _, data in photos[:3]:
        run(data)
    print(f"load average before: {os.getloadavg()}", flush=True)
    table: dict[tuple[str, int], list[dict]] = {}
    references = []
    for index in range(args.rounds):
        reference = reference_round(run, photos, args.seconds / 2)
        references.append(reference)
        print(f"round {index + 1}: reference {reference['images_per_s']:.1f} images/s, "
              f"p50 {reference['p50_ms']:.1f} ms, "
              f"{reference['cpu_ms_per_image']:.1f} CPU ms/image", flush=True)
        order = list(services) if index % 2 == 0 else list(reversed(services))
        for concurrency in args.concurrency:
            for name in order:
                api, split = services[name]
                result = measured_round(api, args.endpoint, photos, concurrency, args.seconds, split)
                result |= {"x_ref": result["images_per_s"] / reference["images_per_s"],
                           "p50_x_ref": result["p50_ms"] / reference["p50_ms"]}
                table.setdefault((name, concurrency), []).append(result)
                print(f"  {name:<6} {concurrency:>2} clients: {result['images_per_s']:6.1f} images/s "
                      f"({result['x_ref']:.2f}x ref), p50 {result['p50_ms']:6.1f} ms ({result['p50_x_ref']:.2f}x), "
                      f"errors {result['errors']}\n      {format_split(result['split'])}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(f"medians over {args.rounds} rounds ({args.endpoint}, mix {args.mix}):")
    for (name, concurrency), rounds in table.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in ("images_per_s", "x_ref", "p50_ms", "p50_x_ref")}
        cpu = statistics.median(r["split"]["total_cpu_ms_per_image"] for r in rounds)
        over = [r["split"]["overhead_cpu_ms_per_image"] for r in rounds if r["split"]["overhead_cpu_ms_per_image"]]
        print(f"  {name:<6} {concurrency:>2} clients: {med['images_per_s']:.1f} images/s ({med['x_ref']:.2f}x ref), "
              f"p50 {med['p50_ms']:.1f} ms ({med['p50_x_ref']:.2f}x), CPU {cpu:.1f} ms/image, "
              f"overhead {statistics.median(over) if over else float('nan'):.1f}, "
              f"errors {sum(r['errors'] for r in rounds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
