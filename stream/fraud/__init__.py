"""Play-fraud detection on listening streams (issue 11).

Modules:

* :mod:`stream.fraud.sketches`: vectorised HyperLogLog registers, count-min
  sketches and linear-counting bitmaps (bounded memory per entity);
* :mod:`stream.fraud.slots`: id -> slot tables with inactivity expiry;
* :mod:`stream.fraud.evidence`: log-likelihood-ratio surprise terms;
* :mod:`stream.fraud.features_account`, :mod:`stream.fraud.features_catalog`:
  per-batch vectorised feature state;
* :mod:`stream.fraud.models`: the two stage models the worker runs;
* :mod:`stream.fraud.simulate`, :mod:`stream.fraud.scenarios`: labelled fraud
  injected into real listening backgrounds;
* :mod:`stream.fraud.labelled_io`, :mod:`stream.fraud.evaluate`,
  :mod:`stream.fraud.baselines`, :mod:`stream.fraud.report`,
  :mod:`stream.fraud.cli`: ``playguard simulate`` / ``playguard eval``.
"""
