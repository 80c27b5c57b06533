"""--plot: busbw against size, with matplotlib (the optional `plot` extra)."""

from __future__ import annotations


def plot(rows: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("ringdist-bench --plot needs matplotlib: pip install 'ringdist[plot]'") from None
    sizes = [row["bytes_per_rank"] for row in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [row["busbw_GBps"] for row in rows], marker="o", label=f"ringdist {rows[0]['op']}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per rank")
    ax.set_ylabel("busbw (GB/s)")
    ax.set_title(f"{rows[0]['op']}, {rows[0]['n_ranks']} ranks")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
