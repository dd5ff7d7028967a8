"""``python -m ductape_jobs.cli``: the same as the ``ductape-jobs`` console script."""

from ductape_jobs.cli.main import main

main()
