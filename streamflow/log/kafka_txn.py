"""Write to Kafka in transactions, one transactional producer per writer: ``KafkaTransaction``.

A ``KafkaTransaction`` owns one librdkafka producer with a ``transactional.id``.
``open`` runs ``init_transactions``: the cluster aborts whatever an older
producer with the same id left open and fences that producer, so a restarted
task (same id) turns its crashed or stalled predecessor into a zombie whose
writes fail. A transaction begins with the first ``append`` after a commit;
``commit`` adds the group's offsets with ``send_offsets_to_transaction`` (with
the member's group metadata, so the coordinator also refuses a member of an
old generation) and then ``commit_transaction``. Readers that read committed
records only (every streamflow consumer) see a transaction's records and
offsets together, or never.

Errors: a fenced producer raises ``ProducerFenced`` and the writer is unusable
from then on; an abortable error (a group fencing the offsets, a refused
record) aborts the transaction and raises the translated error; a retriable
timeout of a commit is retried until ``REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import trio
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaPartition

from ..errors import InvalidConfig, ProducerFenced, StreamflowError
from .kafka_client import REQUEST_TIMEOUT, logger, translate
from .kafka_codec import encode_metadata

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .kafka_transport import KafkaTransport
    from .transport import Columns, Committed, TopicPartition

#: How long one commit or abort call waits before it is retried (s).
CALL_TIMEOUT: Final = 5.0
#: Kafka's default: the cluster aborts a transaction left open longer than this.
TRANSACTION_TIMEOUT_MS: Final = 60_000

_FENCED: Final = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError._FATAL,
    }
)


class KafkaTransaction:
    """The transactional writer of one ``transactional.id``. One task at a time.

    Args:
        transport: The transport whose topics, groups and encoding it uses.
        settings: librdkafka producer settings (the transport's).
        transactional_id: Stable per writer (a task): the same id after a
            restart fences the previous instance.

    Create it with ``KafkaTransport.open_transaction``.
    """

    def __init__(
        self, transport: KafkaTransport, settings: Mapping[str, Any], transactional_id: str
    ) -> None:
        self.transactional_id = transactional_id
        self._transport = transport
        config = {"transaction.timeout.ms": TRANSACTION_TIMEOUT_MS, **settings}
        # librdkafka requires a record's delivery timeout to fit in the transaction's.
        config["delivery.timeout.ms"] = min(
            int(config.get("delivery.timeout.ms", TRANSACTION_TIMEOUT_MS)),
            int(config["transaction.timeout.ms"]),
        )
        try:
            self._producer = Producer({**config, "transactional.id": transactional_id})
        except KafkaException as exc:
            raise InvalidConfig(
                "transactional producer",
                transactional_id,
                f"producer settings that allow transactions ({exc.args[0].str()}); "
                "check producer_config",
            ) from exc
        self._open = False
        self._fenced: ProducerFenced | None = None
        self._closed = False

    async def open(self) -> None:
        """Register the id with the cluster, fencing older instances and aborting their work.

        Raises:
            BrokerUnavailable: the transaction coordinator did not answer.
        """
        await self._call(self._producer.init_transactions)

    async def append(self, topic: str, partition: int, columns: Columns) -> int:
        """Append *columns* in the open transaction (begun here if needed); return the first offset.

        Raises:
            ProducerFenced: a newer instance of this id took over.
            UnknownTopic: no such topic or partition.
        """
        self._begin()
        try:
            return await self._transport.produce_batch(
                topic, partition, columns, producer=self._producer
            )
        except StreamflowError as exc:
            cause = exc.__cause__
            error = cause.args[0] if isinstance(cause, KafkaException) and cause.args else None
            if isinstance(error, KafkaError) and (error.fatal() or error.code() in _FENCED):
                raise self._fence(error) from exc
            await self._abort_quietly(str(exc))
            raise

    async def commit(
        self,
        group: str,
        offsets: dict[TopicPartition, Committed],
        *,
        member_id: str | None = None,
        generation: int | None = None,
    ) -> None:
        """Add *offsets* (with their metadata) for *group*, then commit the transaction.

        Raises:
            RebalanceInProgress: the member is of an old generation or does
                not own a partition; the transaction is aborted.
            ProducerFenced: a newer instance of this id took over.
        """
        self._check_usable()
        try:
            metadata = self._transport.groups.group_metadata(
                group, list(offsets), member_id=member_id, generation=generation
            )
        except StreamflowError as exc:
            await self._abort_quietly(str(exc))
            raise
        kafka_offsets = [
            KafkaPartition(t, p, c.offset, metadata=encode_metadata(c.metadata))
            for (t, p), c in sorted(offsets.items())
        ]
        self._begin()
        producer = self._producer
        await self._call(
            lambda timeout: producer.send_offsets_to_transaction(kafka_offsets, metadata, timeout)
        )
        await self._call(producer.commit_transaction)
        self._open = False

    async def abort(self) -> None:
        """Abort the open transaction, if any (its records and offsets are dropped)."""
        if not self._open or self._fenced is not None:
            self._open = False
            return
        self._open = False
        await self._call(self._producer.abort_transaction, abortable=False)

    async def aclose(self) -> None:
        """Abort an open transaction and release the producer (shielded, bounded)."""
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(CALL_TIMEOUT, shield=True):
            try:
                await self.abort()
            except StreamflowError as exc:  # the cluster aborts it after transaction.timeout.ms
                logger.info("%s: abort at close failed (%s)", self.transactional_id, exc)
            if self._fenced is None:
                try:
                    await trio.to_thread.run_sync(self._producer.flush, 1.0)
                except KafkaException as exc:  # nothing is pending that a reader could see
                    logger.info("%s: flush at close failed (%s)", self.transactional_id, exc)

    def _begin(self) -> None:
        self._check_usable()
        if not self._open:
            self._producer.begin_transaction()  # local state only: does not block
            self._open = True

    def _check_usable(self) -> None:
        if self._fenced is not None:
            raise self._fenced
        if self._closed:
            raise trio.ClosedResourceError(f"transaction {self.transactional_id} is closed")

    def _fence(self, error: KafkaError) -> ProducerFenced:
        self._open = False
        fenced = ProducerFenced(-1, -1, -1)
        fenced.args = (
            f"transactional id {self.transactional_id!r} was taken over by a newer instance "
            f"({error.str()}); this task must stop writing (another one owns its work now)",
        )
        self._fenced = fenced
        return fenced

    async def _call(self, call: Callable[[float], object], *, abortable: bool = True) -> None:
        """Run a blocking transactional call in a worker thread (shielded), retrying timeouts.

        A fatal error fences the writer; an error that requires an abort
        aborts the transaction before it is raised (translated).
        """
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while True:
            try:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(call, CALL_TIMEOUT)
                return
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if not isinstance(error, KafkaError):
                    raise translate(exc, self._transport.bootstrap) from exc
                if error.fatal() or error.code() in _FENCED:
                    raise self._fence(error) from exc
                if error.retriable() and time.monotonic() < deadline:
                    continue
                if abortable and error.txn_requires_abort():
                    await self._abort_quietly(error.str())
                raise translate(error, self._transport.bootstrap) from exc

    async def _abort_quietly(self, reason: str) -> None:
        """Abort the open transaction after an error; a failing abort is logged, not raised."""
        logger.info("%s: aborting the transaction (%s)", self.transactional_id, reason)
        try:
            await self.abort()
        except StreamflowError as exc:
            logger.warning("%s: abort failed (%s)", self.transactional_id, exc)
