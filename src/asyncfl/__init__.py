"""asyncfl: asynchronous federated learning with Stale Synchronous Parallel aggregation.

A reproduction of "Study of Data Imbalance and Asynchronous Aggregation Algorithm on Federated
Learning System" (ICITSI 2020). Entry points: `python -m asyncfl.server`, `python -m asyncfl.client`,
`python -m asyncfl.client.evaluator`; shared logic lives in the plain modules next to them.
"""
