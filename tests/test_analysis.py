"""src/asyncfl/analysis/analyze.py and src/asyncfl/analysis/plot.py on small synthetic run folders with known answers."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from asyncfl.analysis import analyze, inputs, plot
from asyncfl.core import rules


def make_run(folder: Path, staleness: int, seed: int, f1: list[tuple[float, float]], rounds: list[int],
             loss: float = 0, stdev: float = 0, gate_frac=(0.1, 0.3), finished: bool = True) -> Path:
    """A run folder as client/main.py writes it, with the given F1 curve and final rounds per server."""
    folder.mkdir(parents=True)
    n = len(rounds)
    config = {
        "args": {"staleness_threshold": staleness, "duration_s": 10.0, "seed": seed, "dataset": "mnist-5k"},
        "n_servers": n,
        "dataset": {"dataset": "mnist-5k", "stdev": stdev, "seed": seed},
        "server_info": [{"speed_ratio": 1.0, "network": {"loss_pct": loss}} for _ in range(n)],
    }
    if finished:  # server 0 was one round ahead at some point, the others never
        config["finished"] = {"stop_reason": "duration", "rounds_per_server": rounds,
                              "max_staleness_per_server": [1] + [0] * (n - 1)}
    (folder / "config.json").write_text(json.dumps(config))
    pd.DataFrame(f1, columns=["time_s", "f1"]).to_csv(folder / "f1_time.csv", index=False)
    rows = [(0.1 * r, s, r) for s, total in enumerate(rounds) for r in range(1, total + 1)]
    pd.DataFrame(rows, columns=["time_s", "server", "round"]).to_csv(folder / "rounds.csv", index=False)
    pd.DataFrame({"server": range(n), "gate_frac": [gate_frac[i % 2] for i in range(n)]}).to_csv(folder / "yappi.csv", index=False)
    return folder


def test_gini_known_values():
    assert analyze.gini([5, 5, 5, 5]) == 0
    assert analyze.gini([0, 0, 0, 8]) == pytest.approx(0.75)  # (n-1)/n: one has everything
    assert analyze.gini([1, 3]) == pytest.approx(0.25)


def test_run_metrics_have_known_answers(tmp_path):
    # Prepare: F1 0.5 at 0 s, 0.85 at 2 s, 0.7 at 4 s, 0.92 at 6 s, 0.96 at 10 s; rounds 10 and 40.
    run = make_run(tmp_path / "r", 0, 0, [(0, 0.5), (2, 0.85), (4, 0.7), (6, 0.92), (10, 0.96)], [10, 40])
    # Execute
    row = analyze.analyze_run(run)
    # Assert
    assert row["final_f1"] == 0.96
    assert row["time_to_f1_80_s"] == 2 and row["time_to_f1_90_s"] == 6 and row["time_to_f1_95_s"] == 10
    assert row["max_f1_drop"] == pytest.approx(0.15)
    # Trapezoids: (0.5+0.85) + (0.85+0.7) + (0.7+0.92) + 2*(0.92+0.96) = 8.28 f1*s over 10 s.
    assert row["f1_auc_frac"] == pytest.approx(0.828)
    assert (row["rounds_min"], row["rounds_max"], row["rounds_max_min_ratio"]) == (10, 40, 4.0)
    assert row["rounds_gini"] == pytest.approx(0.3)
    assert row["max_staleness"] == 1
    assert row["gate_wait_frac_mean"] == pytest.approx(0.2) and row["gate_wait_frac_max"] == pytest.approx(0.3)


def test_never_reaching_a_threshold_is_nan(tmp_path):
    row = analyze.analyze_run(make_run(tmp_path / "r", 0, 0, [(0, 0.1), (5, 0.85)], [3, 3]))
    assert row["time_to_f1_80_s"] == 5 and pd.isna(row["time_to_f1_90_s"])


def test_sweep_summary_aggregates_repeats_per_configuration(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, final in enumerate([0.90, 0.96]):
        make_run(sweep / f"S0-r{seed}", 0, seed, [(0, 0.1), (10, final)], [5, 5])
    make_run(sweep / "S9999-r0", 9999, 0, [(0, 0.1), (10, 0.99)], [5, 15])
    assert analyze.main(analyze.Args(folders=(sweep,))) == 0
    summary = pd.read_csv(sweep / "summary.csv").set_index("staleness")
    assert summary.loc[0, "repeats"] == 2 and summary.loc[9999, "repeats"] == 1
    assert summary.loc[0, "final_f1_mean"] == pytest.approx(0.93)
    assert summary.loc[0, "final_f1_min"] == 0.90 and summary.loc[0, "final_f1_max"] == 0.96
    assert summary.loc[9999, "rounds_gini_mean"] == pytest.approx(0.25)
    assert len(pd.read_csv(sweep / "runs.csv")) == 3


def test_plots_from_a_sweep_and_from_one_run(tmp_path):
    sweep = tmp_path / "sweep"
    for loss in (0, 20):
        for stdev in (0, 10000):
            for s in (0, 9999):
                for seed in (0, 1):
                    make_run(sweep / f"L{loss}-D{stdev}-S{s}-r{seed}", s, seed, [(0, 0.1), (5, 0.6), (10, 0.9)],
                             [5, 7], loss=loss, stdev=stdev)
    assert plot.main(plot.Args(folders=(sweep,), per_run=True)) == 0
    for name in ("fig3_imbalance", "fig4_loss", "fig5_imbalance_x_loss", "fig6_repeats"):
        assert (sweep / f"{name}.png").stat().st_size > 10_000
    assert (sweep / "L0-D0-S0-r0" / "run.png").exists()
    single = sweep / "L20-D10000-S9999-r1"
    (single / "run.png").unlink()
    assert plot.main(plot.Args(folders=(single,))) == 0
    assert (single / "run.png").stat().st_size > 10_000


def test_unfinished_runs_are_left_out(tmp_path):
    sweep = tmp_path / "sweep"
    done = make_run(sweep / "done", 0, 0, [(0, 0.1), (10, 0.9)], [3, 3])
    running = make_run(sweep / "running", 0, 1, [(0, 0.1)], [1, 1], finished=False)
    # A run stopped by a signal writes its results too, of a shorter run: it is no repeat of the grid.
    cut = make_run(sweep / "interrupted", 0, 2, [(0, 0.1), (4, 0.5)], [2, 2])
    config = json.loads((cut / "config.json").read_text())
    config["finished"].update(stop_reason="interrupted", training_s=4.2)
    (cut / "config.json").write_text(json.dumps(config))
    assert inputs.find_runs([sweep]) == [done, cut]
    assert inputs.find_runs([sweep], with_interrupted=False) == [done]
    assert running.exists()
    # The stopped run is a configuration of its own, at the time it trained, and can be left out.
    assert analyze.main(analyze.Args(folders=(sweep,))) == 0
    summary = pd.read_csv(sweep / "summary.csv")
    assert sorted(summary["duration_s"]) == [4.2, 10.0] and list(summary["repeats"]) == [1, 1]
    assert set(pd.read_csv(sweep / "runs.csv")["stop_reason"]) == {"duration", "interrupted"}
    assert analyze.main(analyze.Args(folders=(sweep,), interrupted=False)) == 0
    assert list(pd.read_csv(sweep / "summary.csv")["duration_s"]) == [10.0]


def test_rules_and_partitions_are_configurations_of_their_own(tmp_path):
    # Prepare: the same cell run with the study's rule and with fedbuff on a Dirichlet split.
    ssp = make_run(tmp_path / "ssp", 9999, 0, [(0, 0.1), (1, 0.9)], [5, 5])
    buff = make_run(tmp_path / "buff", 9999, 0, [(0, 0.1), (1, 0.8)], [5, 5])
    config = json.loads((buff / "config.json").read_text())
    config["aggregation"] = {"aggregation": "fedbuff", "buffer_size": 4, "server_lr": 1.0}
    config["dataset"].update(partition="dirichlet", alpha_dirichlet=0.3)
    (buff / "config.json").write_text(json.dumps(config))
    # Execute
    runs = pd.DataFrame([analyze.analyze_run(d) for d in (ssp, buff)])
    summary = analyze.summarize(runs)
    # Assert
    assert sorted(runs["aggregation"]) == ["fedbuff(K=4,lr=1)", "ssp"]
    assert sorted(runs["partition"]) == ["dirichlet(0.3)", "gaussian"]
    assert len(summary) == 2


@pytest.mark.parametrize("rule,label", [
    ({"aggregation": "fedasync", "alpha": 0.6, "staleness_fn": "hinge", "staleness_a": 10, "staleness_b": 4},
     "fedasync(alpha=0.6,hinge,a=10,b=4)"),
    ({"aggregation": "fedasync", "alpha": 0.5, "staleness_fn": "constant", "staleness_a": 0.5, "staleness_b": 4},
     "fedasync(alpha=0.5,constant)"),
    ({"aggregation": "fedavg"}, "fedavg"),
])
def test_aggregation_labels(rule, label):
    assert rules.label(rule) == label


def synthetic_grid(auc) -> pd.DataFrame:
    """runs.csv rows for the whole grid; ``auc(loss, stdev, staleness, seed)`` gives each run's mean F1."""
    rows = []
    for loss in ("0%", "10%", "20%"):
        for d in (0.0, 600.0, 10000.0):
            for s in (0, 6, 12, 9999):
                for seed in (0, 1, 2):
                    rows.append({"loss": loss, "stdev": d, "staleness": s, "seed": seed,
                                 "f1_auc_frac": auc(loss, d, s, seed), "max_f1_drop": 0.1, "dips": 1,
                                 "rounds_mean": 80.0 if loss != "20%" else 60.0,
                                 "f1_flat_frac": 0.0 if loss != "20%" else 0.3, "f1_mean_abs_step": 0.03})
    return pd.DataFrame(rows)


def test_verdicts_follow_the_stated_rules():
    from asyncfl.analysis import verdicts
    primary = {c.name[0]: (lambda runs, c=c: c.judge(runs, c.primary)[0]) for c in verdicts.CLAIMS}
    # Large S better by 0.1 at L=20% for D=0 and 600 in every repeat; alike elsewhere; at D=10000 one
    # repeat of three favours large S by 0.1.
    def auc(loss, d, s, seed):
        if loss == "20%" and d < 10000:
            return 0.5 + 0.1 * (s == 9999) + 0.01 * seed
        if loss == "20%" and d == 10000:
            return 0.5 + (0.1 if seed == 2 and s == 9999 else 0.0)
        return 0.6 + 0.001 * seed
    runs = synthetic_grid(auc)
    assert primary["3"](runs) == "supported"
    assert primary["4"](runs) == "supported"
    assert primary["2"](runs) == "supported"
    assert primary["1"](runs) == "not supported"  # the same dips for every S
    # One case of the conclusion differs (L=0, D=10000: alike instead of hurt): 3 of 4.
    assert primary["5"](runs) == "partly (3 of 4 cases)"
    # Repeats that disagree in sign do not make a difference: 0.2 in one repeat of three is 0.067 on average.
    noisy = synthetic_grid(lambda loss, d, s, seed: 0.5 + (0.2 if seed == 0 and s == 9999 else 0.0))
    assert primary["3"](noisy) == "not supported"
    assert "missing" in primary["1"](runs[runs["loss"] != "0%"])
    assert "missing" in primary["1"](runs[runs["staleness"] != 9999])


def test_the_sensitivity_table_moves_with_the_threshold_and_the_test():
    from asyncfl.analysis import verdicts
    claim4 = next(c for c in verdicts.CLAIMS if c.name.startswith("4."))
    claim3 = next(c for c in verdicts.CLAIMS if c.name.startswith("3."))
    runs = synthetic_grid(lambda loss, d, s, seed: 0.5 + (0.12 if seed == 2 and s == 9999 and loss == "20%" else 0.0)
                          + (0.1 + 0.02 * seed if s == 9999 and loss == "20%" and d < 10000 else 0.0))
    lower, higher = claim4.threshold_steps()
    assert (lower.size, higher.size) == (0.05, 0.15)
    assert claim4.judge(runs, claim4.primary)[0] == "supported"  # 2 alike, 1 favours large S by 0.12
    assert claim4.judge(runs, higher)[0] == "partly"  # at 0.15 all three are alike: no exception run
    # D=0, 600: S=inf ahead by 0.10 / 0.12 / 0.26 over the seeds (mean 0.16, beyond its spread 0.087)
    assert claim3.judge(runs, claim3.primary)[0] == "supported"
    assert claim3.judge(runs, higher)[0] == "supported"
    assert claim3.judge(runs, verdicts.Reading("f1_auc_frac", 0.2))[0] == "not supported"
    table = verdicts.sensitivity_table(runs)
    assert table.count("\n") == len(verdicts.CLAIMS) + 1
    assert "f1_auc_frac @ 0.1, paired t-test" in table and "dips @ 0.05" in table
    assert "missing cells (dips @ 0.05)" in table  # synthetic rows have no dips_ge_005 column


def test_verdicts_refuse_a_mix_of_wires(tmp_path, capsys):
    from asyncfl.analysis import verdicts
    runs = synthetic_grid(lambda loss, d, s, seed: 0.5)
    runs["wire"] = ["original", "modern"] * (len(runs) // 2)
    runs.to_csv(tmp_path / "runs.csv", index=False)
    assert verdicts.main(verdicts.Args(tmp_path / "runs.csv")) == 2
    assert "differ in wire" in capsys.readouterr().err
    assert verdicts.main(verdicts.Args(tmp_path / "absent.csv")) == 2


def test_stalls_flat_stretches_and_the_last_scores_have_known_answers(tmp_path):
    # Prepare: a paper-regime run at K=10 whose F1 stays at 0.4 from 2 s to 8 s, then moves; rounds
    # with known stalls; two rounds abandoned, one of them on the inactivity timeout.
    f1 = [(0, 0.1), (2, 0.4), (4, 0.4), (6, 0.4), (8, 0.4), (10, 0.5), (12, 0.6), (14, 0.7), (16, 0.8), (18, 0.85)]
    run = make_run(tmp_path / "r", 0, 0, f1, [2, 2])
    config = json.loads((run / "config.json").read_text())
    config["regime"] = {"name": "paper", "time_scale": 10}
    config["finished"]["retries_per_server"] = [2, 0]
    (run / "config.json").write_text(json.dumps(config))
    pd.DataFrame({"time_s": [1, 2, 3, 4], "server": [0, 0, 1, 1], "stall_s": [0.1, 0.2, 0.3, 5.0]}).to_csv(
        run / "rounds.csv", index=False)
    pd.DataFrame({"time_s": [1, 2], "server": [0, 0], "event": ["round_abandoned"] * 2, "detail": ["", ""],
                  "silence_s": [6.0, None], "round_s": [6.5, 1.0]}).to_csv(run / "events.csv", index=False)
    # Execute
    row = analyze.analyze_run(run)
    # Assert: the final score (18 s) is off the interval grid and left out of the grid's measures
    assert row["longest_flat_s"] == 6 and row["longest_flat_paper_min"] == pytest.approx(1.0)
    assert row["f1_last5"] == pytest.approx((0.4 + 0.5 + 0.6 + 0.7 + 0.8) / 5)
    assert (row["stall_p50_s"], row["stall_max_s"]) == (pytest.approx(0.25), 5.0)
    assert row["abandoned_rounds"] == 2 and row["timeouts"] == 1
    assert row["tcp_cc"] == "default (unrecorded)" and row["loss_mechanism"] == "none"


def test_compare_puts_each_loss_against_its_own_clean_cell(tmp_path, capsys):
    from asyncfl.analysis import compare
    clean = [(t, 0.8) for t in range(0, 12, 2)]
    lossy = [(t, 0.4) for t in range(0, 12, 2)]
    make_run(tmp_path / "grid" / "L0", 0, 0, clean + [(11, 0.8)], [10, 10])
    make_run(tmp_path / "grid" / "L20", 0, 0, lossy + [(11, 0.4)], [4, 8], loss=20)
    assert analyze.main(analyze.Args((tmp_path / "grid",))) == 0
    capsys.readouterr()
    assert compare.main(compare.Args((tmp_path / "grid",))) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "| 20% |" in line]
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cells[6] == "2.00 (2.00-2.00)" and cells[8] == "0.50"  # largest/smallest rounds; F1 over L=0


def test_runs_that_differ_only_in_delay_or_rate_are_other_configurations(tmp_path):
    for name, delays in (("plain", [0, 0]), ("delayed", [0, 200])):
        run = make_run(tmp_path / name, 0, 0, [(0, 0.5), (5, 0.9)], [5, 5])
        config = json.loads((run / "config.json").read_text())
        for info, delay in zip(config["server_info"], delays):
            info["network"]["delay_ms"] = delay
        (run / "config.json").write_text(json.dumps(config))
    runs = pd.DataFrame([analyze.analyze_run(tmp_path / name) for name in ("plain", "delayed")])
    assert list(runs["link"]) == ["", "delay 0 200 ms"]
    assert len(analyze.summarize(runs)) == 2


def _variant(tmp_path, name: str, seed: int, change) -> Path:
    run = make_run(tmp_path / name, 9999, seed, [(0, 0.5), (10, 0.9)], [5, 5, 5, 5], loss=10)
    config = json.loads((run / "config.json").read_text())
    change(config)
    (run / "config.json").write_text(json.dumps(config))
    return run


def _delays(ms):
    def change(config):
        for info, d in zip(config["server_info"], ms):
            info["network"]["delay_ms"] = d
    return change


def _rule(**options):
    def change(config):
        config["aggregation"] = {"aggregation": "fedasync", "alpha": 0.6, "staleness_fn": "hinge", "staleness_a": 0.5,
                                 "staleness_b": 4, **options}
    return change


def _args(**changed):
    def change(config):
        config["args"].update(changed)
    return change


@pytest.mark.parametrize("a,b", [
    (_delays([0, 0, 0, 0]), _delays([0, 0, 50, 200])),  # delay only
    (_rule(), _rule(staleness_b=8)),  # one rule option only
    (_args(lr=0.1), _args(lr=0.05)),  # one training setting only
    (_args(eval_samples=0), _args(eval_samples=500)),  # what the F1 is scored on
])
def test_runs_that_differ_in_one_setting_only_are_separate_configurations(tmp_path, a, b):
    # Prepare: two repeats of each variant, otherwise the same
    runs = pd.DataFrame([analyze.analyze_run(_variant(tmp_path, f"{tag}{seed}", seed, change))
                         for tag, change in (("a", a), ("b", b)) for seed in (0, 1)])
    # Execute
    summary = analyze.summarize(runs)
    # Assert: two configurations of two repeats each
    assert list(summary["repeats"]) == [2, 2]


def test_the_study_settings_leave_the_settings_column_empty(tmp_path):
    run = _variant(tmp_path, "r", 0, _args(batch_size=32, lr=0.1, eval_samples=0, timeout_on="round"))
    assert analyze.analyze_run(run)["settings"] == ""
    lr = _variant(tmp_path, "s", 0, _args(lr=0.05, eval_samples=500))
    assert analyze.analyze_run(lr)["settings"] == "lr=0.05 eval_samples=500"


def test_a_paper_run_whose_servers_kept_another_pace_spread_is_its_own_configuration(tmp_path):
    def spread(value):
        def change(config):
            config["regime"] = {"name": "paper", "time_scale": 10, "pace_spread": value}
        return change
    assert analyze.analyze_run(_variant(tmp_path, "a", 0, spread(0.1)))["settings"] == ""
    assert analyze.analyze_run(_variant(tmp_path, "b", 0, spread(0.0)))["settings"] == "pace_spread=0"


def test_the_table_beside_the_paper_relates_each_loss_to_l0():
    from asyncfl.analysis import verdicts
    runs = synthetic_grid(lambda loss, d, s, seed: 0.5).assign(
        f1_last5=lambda r: r["loss"].map({"0%": 0.9, "10%": 0.9, "20%": 0.45}),
        longest_flat_paper_min=lambda r: r["loss"].map({"0%": 0.5, "10%": 0.5, "20%": 6.0}),
        rounds_max_min_ratio=1.2)
    table = verdicts.beside_the_paper(runs).splitlines()
    assert len(table) == 2 + 3 * 4 * 2  # D x S x (10%, 20%)
    assert "| 0 | 0 | 20% | 0.50 (0.60) | 6.0 (~12) | 1.20 | 60.0 | 3 |" in table
    assert "| 600 | inf | 10% | 1.00 (-) | 0.5 (-) | 1.20 | 80.0 | 3 |" in table


def test_a_connections_first_round_is_counted_apart_from_later_rounds():
    # Server 0: its first round fails, the new connection's first succeeds, then 3 more, one failing, and
    # the next connection's first succeeds. Server 1: four rounds on its first connection.
    rounds = pd.DataFrame({"time_s": [5, 6, 8, 12, 1, 2, 3, 4], "server": [0, 0, 0, 0, 1, 1, 1, 1]})
    events = pd.DataFrame({"time_s": [2, 3, 9, 10, 11], "server": ["0", "0", "0", "evaluator", "0"],
                           "event": ["round_abandoned", "reconnected", "round_abandoned", "evaluator_behind",
                                     "reconnected"]})
    stats = analyze.connection_stats(events, rounds)
    assert stats["fresh_fail_frac"] == pytest.approx(1 / 4)  # fresh: s0 fail, s0 ok, s0 ok, s1 ok
    assert stats["later_fail_frac"] == pytest.approx(1 / 6)  # later: s0 ok, ok, fail; s1 ok, ok, ok
    assert math.isnan(analyze.connection_stats(None, rounds)["fresh_fail_frac"])


def sensitivity_rows(auc, stdevs=(0.0, 10000.0), **columns) -> pd.DataFrame:
    """runs.csv rows at the sensitivity cells (L 0/20%, S 0/inf, seeds 0-2)."""
    rows = [{"loss": loss, "stdev": d, "staleness": s, "seed": seed, "f1_auc_frac": auc(loss, d, s, seed),
             "final_f1": auc(loss, d, s, seed), "max_f1_drop": 0.1, "dips": 1, "f1_mean_abs_step": 0.02,
             "rounds_mean": 70.0, "abandoned_rounds": 0, "thread_deaths": 0, "fresh_fail_frac": 0.5,
             "later_fail_frac": 0.1, "settings": "", "dataset": "mnist-5k", **columns}
            for loss in ("0%", "20%") for d in stdevs for s in (0, 9999) for seed in (0, 1, 2)]
    return pd.DataFrame(rows)


def test_a_grid_s_own_d_values_play_the_paper_s_600_and_10000():
    from asyncfl.analysis import verdicts
    claim3 = next(c for c in verdicts.CLAIMS if c.name.startswith("3."))
    claim5 = next(c for c in verdicts.CLAIMS if c.name.startswith("5."))
    helps_at_20 = lambda loss, d, s, seed: 0.5 + (0.2 + 0.01 * seed if loss == "20%" and s == 9999 else 0.0)  # noqa: E731
    code = sensitivity_rows(helps_at_20, stdevs=(0.0, 10.0, 1000.0))
    assert verdicts.d_roles(code) == (10.0, 1000.0)
    verdict, detail = claim3.judge(code, claim3.primary)
    assert verdict == "supported" and "D=10:" in detail and "D=600" not in detail
    assert "L=0%, D=1000" in claim5.judge(code, claim5.primary)[1]
    claim1 = next(c for c in verdicts.CLAIMS if c.name.startswith("1."))
    no_mid_at_0 = code[~((code["loss"] == "0%") & (code["stdev"] == 10.0))]  # d-code runs D=10 at L=20% only
    assert claim1.judge(no_mid_at_0, claim1.primary)[1].startswith("D=0: dips") and "D=10:" not in \
        claim1.judge(no_mid_at_0, claim1.primary)[1]
    two = sensitivity_rows(helps_at_20)  # no middle D: claim 3 is read at D=0 alone
    assert verdicts.d_roles(two) == (None, 10000.0)
    verdict, detail = claim3.judge(two, claim3.primary)
    assert verdict == "supported" and detail.startswith("D=0:") and detail.count("D=") == 1


def test_the_sensitivity_table_marks_the_verdicts_a_choice_moves(tmp_path, capsys):
    from asyncfl.analysis import sensitivity
    helps = lambda loss, d, s, seed: 0.5 + (0.2 + 0.01 * seed if loss == "20%" and s == 9999 else 0.0)  # noqa: E731
    alike = lambda loss, d, s, seed: 0.5 + 0.001 * seed  # noqa: E731
    base = pd.concat([sensitivity_rows(helps, stdevs=(0.0, 600.0, 10000.0)),
                      sensitivity_rows(helps).assign(seed=3)])  # D=600 and seed 3 are not base's cells
    base.to_csv(tmp_path / "grid.csv", index=False)
    for name, frame in (("flat", sensitivity_rows(alike)),
                        ("code", sensitivity_rows(helps, stdevs=(10.0, 1000.0))),
                        ("whole", sensitivity_rows(alike, stdevs=(10000.0,), settings="eval_samples=0",
                                                   dataset="fashion-mnist")),
                        ("fash", sensitivity_rows(alike, dataset="fashion-mnist"))):
        (tmp_path / "res" / name).mkdir(parents=True)
        frame.to_csv(tmp_path / "res" / name / "runs.csv", index=False)
    assert sensitivity.main(sensitivity.Args(tmp_path / "res", base=tmp_path / "grid.csv", figures=False)) == 0
    table = (tmp_path / "res" / "verdicts.md").read_text()
    header, rule, *rows = table.split("\n\n")[1].splitlines()
    assert header == "| claim | base | code | fash | flat |"  # the whole-test-set variant is no column
    claim3 = next(r for r in rows if r.startswith("| 3."))
    assert claim3.split(" | ")[1:] == ["supported", "supported", "**not supported** (moves)", "**not supported** (moves) |"]
    assert "not judged (no L=10%)" in next(r for r in rows if r.startswith("| 2."))
    assert rows[-1] == "| runs (repeats) | 24 (3) | 36 (3) | 24 (3) | 24 (3) |"  # code took base's 12 runs at D=0
    assert "| 2,000 images (fash) | 3 |" in table and "| 10,000 images (whole) | 3 |" in table
    all_runs = pd.read_csv(tmp_path / "res" / "runs.csv")
    assert set(all_runs["variant"]) == {"base", "code", "fash", "flat", "whole"}
    assert len(all_runs[all_runs["variant"] == "base"]) == 24
    summary = pd.read_csv(tmp_path / "res" / "summary.csv")
    assert summary.loc[summary["variant"] == "flat", "repeats"].eq(3).all()
