"""Scale-out: per-account extraction tasks run on a real Dask cluster (prefect-dask)."""

from __future__ import annotations

import pytest

from connectors.simulators.google import GoogleSimulator
from flows.workspace import Home
from tests.mailbox import AS_OF, connect, sim_mail, snapshot

pytest.importorskip("prefect_dask")


def test_sync_on_a_dask_cluster_matches_the_local_run(tmp_path, prefect_harness):
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    from flows.sync import sync_workspace

    snaps = []
    with GoogleSimulator() as sim:
        for who in ("alice@acme-team.io", "bob@acme-team.io"):
            sim.add_user(
                who,
                refresh_token="rt-" + who.split("@")[0],
                client_id="rapport-test",
                client_secret="secret",
            )
            base = 0 if who.startswith("a") else 1000
            sim.mailbox(who).add_messages(
                [
                    sim_mail(base + k, f"<{who}>", [f"c{k % 4}@globex.com"], labels=["SENT"])
                    for k in range(1, 21)
                ]
            )
        with LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster:
            for runner in (None, DaskTaskRunner(address=cluster.scheduler_address)):
                home = Home(tmp_path / ("dask" if runner else "local"))
                for who in ("alice@acme-team.io", "bob@acme-team.io"):
                    connect(home, sim, who)
                flow = (
                    sync_workspace.with_options(task_runner=runner) if runner else (sync_workspace)
                )
                out = flow(home=str(home.root), as_of=AS_OF.isoformat())
                assert [s["status"] for s in out["streams"]] == ["ok"] * 4
                snaps.append(snapshot(home.warehouse))
    assert snaps[0]["messages"].height == snaps[1]["messages"].height == 40
    assert snaps[0]["people"].equals(snaps[1]["people"])
