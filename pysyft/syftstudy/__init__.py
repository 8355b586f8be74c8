"""The study on its own stack: PySyft 0.2.3 websocket workers, torch 1.4, Python 3.7 (``--backend pysyft``).

``owner`` is one data owner (a ``WebsocketServerWorker`` hosting one shard), ``model_owner`` the client
(one thread per owner driving a ``WebsocketClientWorker``, the SSP gate, ``global += (new - old) / n``,
an evaluator process fed by a queue), ``common`` what both share. Each takes one JSON spec written by
the Python 3.11 launcher (src/asyncfl/launch/pysyft.py), which splits the data, makes the namespaces,
starts these processes and writes config.json from what they leave in the run folder.
"""
