"""The deploy check: a model measured as it will be served (``clsact bench``).

* :mod:`~clsact.deploy.latency`: the latency harness (warm-up excluded, runs until the
  median is stable, p50/p90, images/s);
* :mod:`~clsact.deploy.runtimes`: the runtimes a model can be served with, each detected with
  a "skipped: why" line when it cannot run here.
"""
