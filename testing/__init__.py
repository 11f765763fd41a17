"""What the tests and the benchmarks share: fakes of the outside services, a simulated trainer, the tiny
dataset and throwaway workspaces, and the record invariants every session must keep.

Not installed with the package (pyproject's packages.find names agent, tools and memory only): it is
imported from a checkout, by tests/ (pytest puts the repository root on sys.path) and by benchmarks/
(which put it there themselves). Neither tests/ nor benchmarks/ imports the other for these.
"""
