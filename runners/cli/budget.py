"""``hml budget``: this month's spend by team and target, against the profile's team budgets."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import typer

app = typer.Typer()


@app.command()
def budget(
    ctx: typer.Context,
    output: Annotated[Literal["text", "json"], typer.Option("--output", "-o", help="text or json")] = "text",
) -> None:
    """Month-to-date spend by team and target, from the tracking server: ended runs at their
    cost, running ones at their worst case; each team against its monthly budget."""
    from runners.profile import load_profile, tracking_uri
    from runners.runs.budget import month_start
    from runners.tracking.queries import TERMINAL, month_spend

    profile = load_profile(ctx.find_root().params.get("config"))
    runs = month_spend(tracking_uri(profile), month_start())
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for s in runs:
        row = rows.setdefault((s.team, s.target), {"ended_usd": 0.0, "running_usd": 0.0, "runs": 0})
        row["ended_usd" if s.status in TERMINAL else "running_usd"] += s.usd
        row["runs"] += 1
    teams = sorted({t for t, _ in rows} | set(profile.budgets))
    table: list[dict[str, Any]] = []
    for team in teams:
        limit = profile.budgets[team].monthly_usd if team in profile.budgets else None
        spent = sum(r["ended_usd"] + r["running_usd"] for (t, _), r in rows.items() if t == team)
        for (t, target), r in sorted(rows.items()):
            if t == team:
                table.append({"team": team, "target": target, **{k: round(v, 6) for k, v in r.items()}})
        table.append(
            {
                "team": team,
                "target": "(all)",
                "spent_usd": round(spent, 6),
                "monthly_usd": limit,
                "used": round(spent / limit, 4) if limit else None,
                "alert_at": profile.budgets[team].alert_at if team in profile.budgets else None,
            }
        )
    if output == "json":
        print(json.dumps(table))
        return
    from rich.console import Console
    from rich.table import Table

    shown = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("TEAM", "TARGET", "RUNS", "ENDED", "RUNNING (WORST)", "SPENT", "BUDGET", "USED"):
        shown.add_column(column, justify="left" if column in ("TEAM", "TARGET") else "right")
    for line in table:
        if line["target"] == "(all)":
            limit = line["monthly_usd"]
            used = f"{line['used']:.0%}" if line["used"] is not None else ""
            budget_ = f"${limit:.2f}" if limit else "-"
            shown.add_row(line["team"], "(all)", "", "", "", f"${line['spent_usd']:.2f}", budget_, used)
        else:
            shown.add_row(
                line["team"],
                line["target"],
                str(int(line["runs"])),
                f"${line['ended_usd']:.2f}",
                f"${line['running_usd']:.2f}",
                "",
                "",
                "",
            )
    Console().print(shown)
