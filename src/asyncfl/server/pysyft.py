"""The data owner's side of the original's wire (``--wire original``, net/pysyft.py): PySyft 0.2's
``WebsocketServerWorker`` answering ``WebsocketClientWorker``'s messages, with today's training.

``ObjectStore`` is the owner's object registry (BaseWorker's ``_objects``): one per owner, shared by every
connection, as PySyft's was. ``answer`` routes one message (BaseWorker.recv_msg's ``_message_router``):
ObjectMessage -> set_obj (a TrainConfig also becomes the owner's current one, as FederatedClient.set_obj
did), ExecuteWorkerFunctionMessage("fit") -> fit on the current TrainConfig's model, registering the loss
under the return id, ObjectRequestMessage -> respond_to_obj_req (the object is de-registered and sent),
ForceObjectDeleteMessage -> force_rm_obj.

``SharedQueue`` is ``--faults original``'s server: each connection's reader puts what it receives into the
owner's one queue and each connection's writer takes the next message from it, whichever connection it
came from, answers it and sends the answer on its own connection (websocket_server.py's
``broadcast_queue``, ``_consumer_handler``, ``_producer_handler``). A message goes to the writer that has
waited longest: while an abandoned connection's writer still waits (its close not yet seen), it takes the
new connection's first message and answers it on the old one, as PySyft's old producer did.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque

from asyncfl.core.protocol import TrainConfig
from asyncfl.core.task import ShardTrainer
from asyncfl.net import pysyft

log = logging.getLogger("asyncfl.server")

MAX_OBJECTS = 64  # PySyft kept every object until deleted; abandoned rounds would grow it without bound


# PySyft 0.2.3 kept any object until deleted. Here the store holds only what a round registers (a
# [SCRIPT_MODULE, bytes, n] payload, a TrainConfig, the loss tensor it makes itself), its payloads' bytes
# bounded in total: a round holds two payloads of ~1.7 MB, so 32 MiB is many abandoned rounds' worth.
MAX_STORE_BYTES = 32 << 20


def _size(obj) -> int:
    """The bytes an object holds in the store (a payload's or a tensor's bytes; a TrainConfig's few)."""
    if isinstance(obj, list) and len(obj) == 3 and isinstance(obj[1], bytes):  # a script payload
        return len(obj[1])
    if isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], list):  # the loss tensor
        return sum(len(x) for x in obj[1] if isinstance(x, (bytes, str)))
    return 256


class ObjectStore:
    """Objects by id, the oldest dropped beyond MAX_OBJECTS or MAX_STORE_BYTES, and the current TrainConfig."""

    def __init__(self, max_bytes: int = MAX_STORE_BYTES) -> None:
        self.objects: OrderedDict[int, object] = OrderedDict()
        self.sizes: dict[int, int] = {}
        self.bytes = 0
        self.max_bytes = max_bytes
        self.train_config: tuple[TrainConfig, int] | None = None  # (config, its model's id)
        self.lock = threading.Lock()

    def put(self, obj_id: int, obj) -> None:
        size = _size(obj)
        if size > self.max_bytes:
            raise ValueError(f"an object of {size} bytes is beyond the store's {self.max_bytes}")
        self.pop(obj_id)
        self.objects[obj_id], self.sizes[obj_id] = obj, size
        self.bytes += size
        while len(self.objects) > MAX_OBJECTS or self.bytes > self.max_bytes:
            self.pop(next(iter(self.objects)))

    def pop(self, obj_id: int):
        obj = self.objects.pop(obj_id, None)
        self.bytes -= self.sizes.pop(obj_id, 0)
        return obj


def _object_id(x) -> int:
    if not (isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63):
        raise ValueError("an object id is an integer in [0, 2**63)")
    return x


def answer(trainer: ShardTrainer, store: ObjectStore, message) -> object:
    """The reply object to one request object; raises ValueError (or a SyftWireError) for a bad one."""
    if not (isinstance(message, list) and len(message) == 2 and isinstance(message[0], int)):
        raise ValueError("a message is [kind, contents]")
    kind, contents = message
    if kind not in ANSWERS:
        raise ValueError(f"unknown message kind {kind}")
    return ANSWERS[kind](trainer, store, contents)


def _store_object(trainer: ShardTrainer, store: ObjectStore, contents) -> None:
    """ObjectMessage: the model (an ObjectWrapper) or the TrainConfig, registered under its id."""
    if not (isinstance(contents, list) and len(contents) == 2 and isinstance(contents[1], list)):
        raise ValueError("an ObjectMessage carries [type, object]")
    obj_type, obj = contents
    if obj_type == pysyft.WRAPPER:
        if len(obj) != 2:
            raise ValueError("an ObjectWrapper is [id, payload]")
        if not pysyft.is_script_payload(obj[1]):  # a round registers its model and loss function, nothing else
            raise ValueError("an ObjectWrapper carries a ScriptModule payload [type, bytes, length]")
        with store.lock:
            store.put(_object_id(obj[0]), obj[1])
        return None
    if obj_type == pysyft.TRAIN_CONFIG:
        if len(obj) != 9:
            raise ValueError("a TrainConfig has nine fields")
        model_id, _loss_id, batch_size, _epochs, optimizer, optimizer_args, config_id, max_nr_batches, shuffle = obj
        if not (isinstance(optimizer_args, dict) and set(optimizer_args) == {"lr"}):
            raise ValueError("optimizer_args must be {'lr': ...}")
        config = TrainConfig.from_dict({"batch_size": batch_size, "max_nr_batches": max_nr_batches,
                                        "lr": optimizer_args["lr"], "shuffle": shuffle, "optimizer": optimizer})
        with store.lock:
            store.put(_object_id(config_id), config)
            store.train_config = (config, _object_id(model_id))
        return None
    raise ValueError(f"unknown object type {obj_type}")


def _fit(trainer: ShardTrainer, store: ObjectStore, contents) -> None:
    """fit(dataset_key=...): train the registered model in place; its loss goes under the return id."""
    if not (isinstance(contents, list) and len(contents) == 2 and contents[0] == "fit"
            and isinstance(contents[1], list) and len(contents[1]) == 3 and isinstance(contents[1][1], dict)
            and set(contents[1][1]) == {"dataset_key"} and isinstance(contents[1][2], list)
            and len(contents[1][2]) == 1):
        raise ValueError("the only worker function is fit(dataset_key=...) with one return id")
    dataset_key, return_id = contents[1][1]["dataset_key"], _object_id(contents[1][2][0])
    if not isinstance(dataset_key, str):
        raise ValueError("dataset_key must be a string")
    with store.lock:
        if store.train_config is None:
            raise ValueError("fit before a TrainConfig")
        config, model_id = store.train_config
        payload = store.objects.get(model_id)
    if payload is None:
        raise ValueError(f"no model with id {model_id}")
    weights = pysyft.weights_of(payload)
    trainer.check_weights(weights)
    result = trainer.fit(dataset_key, config, weights)
    stats = {"loss": result.loss, "n_samples": result.n_samples, "compute_s": result.compute_s,
             "idle_s": result.idle_s}
    with store.lock:
        # The ObjectWrapper's model was trained in place: its id now holds the trained weights.
        store.put(model_id, pysyft.model_payload(result.weights, trainer.dataset_key))
        store.put(return_id, pysyft.loss_tensor(result.loss, stats))
    return None


def _send_object(trainer: ShardTrainer, store: ObjectStore, contents) -> object:
    """ObjectRequestMessage: the object under an id, de-registered as respond_to_obj_req did."""
    if not (isinstance(contents, list) and len(contents) == 3):
        raise ValueError("an ObjectRequestMessage is [id, user, reason]")
    obj_id = _object_id(contents[0])
    with store.lock:
        obj = store.pop(obj_id)
    if obj is None or isinstance(obj, TrainConfig):
        raise ValueError(f"no object with id {obj_id}")
    return obj if obj_id == pysyft.LOSS_ID else [pysyft.WRAPPER, [obj_id, obj]]


def _delete_object(trainer: ShardTrainer, store: ObjectStore, contents) -> None:
    with store.lock:
        store.pop(_object_id(contents))
    return None


# What each of PySyft 0.2.3's message kinds does here (the round's seven exchanges use these four).
ANSWERS = {pysyft.OBJECT_MESSAGE: _store_object, pysyft.WORKER_FUNCTION: _fit, pysyft.OBJECT_REQUEST: _send_object,
           pysyft.FORCE_DELETE: _delete_object}


def handle_text(trainer: ShardTrainer, store: ObjectStore, text) -> tuple[str, str | None]:
    """One text message in, one text reply out, and why it was refused (None if served). Never raises."""
    try:
        return pysyft.to_text(answer(trainer, store, pysyft.from_text(text))), None
    except Exception as e:  # noqa: BLE001 - whatever arrives, the sender gets an error reply
        reason = f"{type(e).__name__}: {e}"[:300]
        return pysyft.to_text(pysyft.error(reason)), reason


class _Writer:
    """A writer waiting in line: its connection's ``closed`` event, and the message handed to it."""

    __slots__ = ("closed", "item", "handed")

    def __init__(self, closed: threading.Event):
        self.closed, self.item, self.handed = closed, None, False


# PySyft's broadcast_queue was an unbounded asyncio.Queue. A client has one message out per connection,
# so what waits here is a few messages of abandoned rounds at most; beyond these bounds a message is
# dropped (logged and counted), not kept: 40 frames of 8 MiB sent during a long fit took an owner to 800 MB.
MAX_QUEUED = 16
MAX_QUEUED_BYTES = 32 << 20


class SharedQueue:
    """One queue of received messages for all of an owner's connections, as PySyft's ``broadcast_queue``
    (an asyncio.Queue): a message that arrives is handed to the writer that has waited longest, unless its
    connection had already ended (asyncio cancelled that producer when its consumer ended). A handed message
    is answered on the writer's own connection even if that connection ends right after: PySyft's woken
    producer ran before the consumer's end could cancel it, and its reply was lost on the dying
    connection (tests/test_pysyft_backend.py runs the same sequence on PySyft 0.2.3 itself)."""

    def __init__(self, max_items: int = MAX_QUEUED, max_bytes: int = MAX_QUEUED_BYTES) -> None:
        self._items: deque = deque()  # messages that arrived while no writer waited
        self._cond = threading.Condition()
        self._line: deque[_Writer] = deque()  # waiting writers, oldest first
        self.max_items, self.max_bytes = max_items, max_bytes
        self.bytes = 0  # of the messages in _items
        self.dropped = 0

    def put(self, item) -> bool:
        """Hand ``item`` to the writer that has waited longest, or keep it; False if it was dropped
        because what waits is already at the bound."""
        with self._cond:
            while self._line and self._line[0].closed.is_set():
                self._line.popleft()  # a writer whose connection ended is no longer waiting
            if self._line:
                writer = self._line.popleft()
                writer.item, writer.handed = item, True
            elif len(self._items) >= self.max_items or self.bytes + len(item) > self.max_bytes:
                self.dropped += 1
                return False
            else:
                self._items.append(item)
                self.bytes += len(item)
            self._cond.notify_all()
            return True

    def wake(self) -> None:
        """Let waiting writers see that their connection ended."""
        with self._cond:
            self._cond.notify_all()

    def get(self, closed: threading.Event, timeout_s: float = 0.5):
        """The next message for this writer, or None once its connection ``closed`` with nothing handed."""
        with self._cond:
            if self._items and not self._line:
                item = self._items.popleft()
                self.bytes -= len(item)
                return item
            me = _Writer(closed)
            self._line.append(me)
            try:
                while not me.handed:
                    if closed.is_set():
                        return None
                    self._cond.wait(timeout_s)
                return me.item
            finally:
                if not me.handed and me in self._line:
                    self._line.remove(me)

    def __len__(self) -> int:
        return len(self._items)


def shared_queue_session(conn, queue: SharedQueue, serve) -> tuple[int, str]:
    """``--faults original``: read into the owner's queue on a thread of its own; answer from the queue on
    this one, sending each answer on this connection, until this connection's reader ends. ``serve``
    answers one message (binary or text) with one reply. Returns (answered, why it ended)."""
    from asyncfl.net import transport

    closed, ended = threading.Event(), []

    def consume() -> None:
        dropped = 0
        try:
            while True:
                if not queue.put(conn.recv()):
                    dropped += 1
                    if dropped == 1:  # one line per connection; the count at its end
                        log.warning("the owner's queue is full (%d messages, %d bytes): dropping what %s sends",
                                    len(queue), queue.bytes, conn.remote_address)
        except transport.ConnectionClosed as e:
            ended.append(str(e))
        finally:
            if dropped:
                log.warning("%d messages from %s dropped at the full queue", dropped, conn.remote_address)
            closed.set()
            queue.wake()

    reader = threading.Thread(target=consume, name=f"{threading.current_thread().name}-reader", daemon=True)
    reader.start()
    answered = 0
    try:
        while (message := queue.get(closed)) is not None:
            reply = serve(message)
            answered += 1
            conn.send(reply)  # on this connection, whoever sent the message
    except transport.ConnectionClosed as e:
        ended.append(str(e))
        conn.shutdown()
    reader.join(timeout=5.0)
    return answered, ended[0] if ended else "closed"


def warm_up(dataset: str) -> None:
    """Make the TorchScript archive the model payloads are cut from (net/pysyft.py caches it)."""
    pysyft.torchscript_archive(dataset)
