"""Paper Table 2 efficiency figures beside ours, and the SDFFN parameter claim.

    python benchmarks/paper_table.py            # writes benchmarks/results/paper_table.{md,json}
"""
import argparse

from _common import RESULTS

from mednext_zoo.benchmark.suites import run_suite

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=str(RESULTS))
    print(run_suite('paper_table', out_dir=p.parse_args().out))
