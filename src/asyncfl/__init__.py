"""asyncfl: asynchronous federated learning with Stale Synchronous Parallel aggregation.

A reproduction of "Study of Data Imbalance and Asynchronous Aggregation Algorithm on Federated
Learning System" (ICITSI 2020). Entry points: `python -m asyncfl.launch` (train.sh: one run),
`python -m asyncfl.launch.sweep` (train_batch.sh), `python -m asyncfl.server`, `python -m asyncfl.client`,
`python -m asyncfl.client.evaluator`, `python -m asyncfl.analysis.<tool>`. The folders are the roles
(core, net, netem, server, client, analysis, launch, process; docs/architecture.md); what both sides
share is in `core/`, every entry point's flags in `settings.py`.
"""
