"""Paper Table 7 ablation variants #1-#8 (LAFFN on/off, SEM or a plain mixer, SDFFN or a ratio-4 FFN), counted.

    python benchmarks/ablation.py               # writes benchmarks/results/ablation.{md,json}
"""
import argparse

from _common import RESULTS

from mednext_zoo.benchmark.suites import run_suite

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=str(RESULTS))
    print(run_suite('ablation', out_dir=p.parse_args().out))
