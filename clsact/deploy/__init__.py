"""The deploy check: a model measured as it will be served (``clsact bench``).

* :mod:`~clsact.deploy.runtimes`: the runtimes a model can be served with and the file each
  serves it from, each detected with a "skipped: why" line when it cannot run here;
* :mod:`~clsact.deploy.qdq`: rewrites of a QAT model's quantize/dequantize pairs (observer
  pairs removed for OpenVINO; the uint8 zero-point rewrite ``make bench`` measures);
* :mod:`~clsact.deploy.bench`: latency and served accuracy, paired with Paddle's own;
* :mod:`~clsact.deploy.diff`: where a runtime's intermediate tensors part from Paddle's;
* :mod:`~clsact.deploy.latency`: the latency harness (warm-up excluded, runs until the
  median is stable, p50/p90, images/s; interleaved rounds);
* :mod:`~clsact.deploy.machine`: the CPU's instruction sets and the runtimes' versions;
* :mod:`~clsact.deploy.report`: a run's deploy report and the forms it publishes.
"""
