"""The ``ldrld`` command and what it runs: ``cli`` (the command line), ``check`` (the
comparison with the float64 reference, and its tolerance table), ``bench`` (timings) and
``profile`` (the static sm_90 count). The library never imports these."""
