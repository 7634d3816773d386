from astra.cli import main


def test_bench_prints_the_table(capsys):
    code = main(["bench", "--random", "astra-tiny", "--chunks", "2", "--history", "1", "3", "--threads", "1",
                 "--long-frames", "24", "--compare-recompute", "--guidance", "2.0"])
    out = capsys.readouterr().out
    assert code == 0
    for metric in ("sustained frames/s", "long/short history ratio", "key-press-to-frame latency",
                   "authors' full recompute", "peak memory", "KV cache"):
        assert metric in out, metric
