"""The pysyft backend's own logic, on Python 3.7 (.venv-pysyft/bin/python -m unittest discover pysyft/tests):
the gate, the update, the pace, the CSV rows. The processes themselves are tested end to end from the
3.11 suite (tests/test_pysyft_backend.py)."""

import os
import tempfile
import threading
import unittest

import torch
from syftstudy import common
from syftstudy.model_owner import Study
from syftstudy.owner import paced_idle_s


def weights(value: float) -> dict:
    return {"w": torch.full((3,), value), "b": torch.full((1,), value)}


class GateTest(unittest.TestCase):
    def test_s0_holds_a_server_one_round_ahead_until_the_slowest_completes(self):
        study = Study(weights(0.0), 2, 0)
        self.assertTrue(study.wait_turn(0))
        study.apply(0, weights(1.0), weights(0.0), 0)
        passed = threading.Event()
        t = threading.Thread(target=lambda: study.wait_turn(0) and passed.set())
        t.start()
        self.assertFalse(passed.wait(0.2))  # server 0 is one round ahead of server 1
        study.apply(1, weights(1.0), weights(0.0), 0)
        self.assertTrue(passed.wait(5))
        t.join(5)

    def test_a_stop_wakes_a_waiting_thread(self):
        study = Study(weights(0.0), 2, 0)
        study.apply(0, weights(1.0), weights(0.0), 0)
        result = []
        t = threading.Thread(target=lambda: result.append(study.wait_turn(0)))
        t.start()
        study.halt()
        t.join(5)
        self.assertEqual(result, [False])


class UpdateTest(unittest.TestCase):
    def test_global_moves_by_the_delta_over_n_and_counts_staleness(self):
        study = Study(weights(1.0), 4, 9999)
        rnd, staleness, behind, new_min, new_max, snap = study.apply(2, weights(3.0), weights(1.0), 0)
        self.assertTrue(torch.allclose(study.weights["w"], torch.full((3,), 1.5)))
        self.assertEqual((rnd, staleness, behind, new_min, new_max, snap), (1, 1, 0, 0, 1, None))
        _, _, behind, _, _, _ = study.apply(2, weights(1.0), weights(1.0), 0)
        self.assertEqual(behind, 1)  # one update landed since that round's snapshot
        self.assertEqual(study.max_staleness[2], 2)


class PaceTest(unittest.TestCase):
    def test_the_fit_lasts_speed_times_the_larger_of_compute_and_pace(self):
        self.assertAlmostEqual(paced_idle_s(0.01, 3.0, 1.0), 2.99)
        self.assertAlmostEqual(paced_idle_s(0.5, 0.0, 2.0), 0.5)
        self.assertEqual(paced_idle_s(4.0, 3.0, 1.0), 0.0)


class CsvTest(unittest.TestCase):
    def test_rows_are_whole_on_disk_as_soon_as_written(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "x.csv")
            log = common.CsvLog(path, ["a", "b"])
            log.write(1, 2)
            with open(path, newline="") as f:
                self.assertEqual(f.read(), "a,b\n1,2\n")
            with self.assertRaises(ValueError):
                log.write(1, 2, 3)  # a row of the wrong width is refused, never written
            log.close()


if __name__ == "__main__":
    unittest.main()
