"""Outside benchmarks of what the data teaches, used by ``bench/transfer.py`` and its tests (not by the product):
the rule-made COCO transfer set and the rules baseline (:mod:`bench.outside.rules`, :mod:`bench.outside.transfer`)
and PAWS-Wiki dev (:mod:`bench.outside.paws`)."""
