#!/usr/bin/env python3
"""A switchyard gateway in Python, talking to the sidecar over gRPC.

Stubs are generated from ../../proto at start-up (grpcio-tools), so the
example never drifts from the API. Usage:

    pip install -r examples/python/requirements.txt
    python3 examples/python/client.py 127.0.0.1:50051

It attaches two gateways, brings a user online on each, sends a message and
a batch from one to the other, reads the deliveries from the Attach stream
and acks them (cumulatively, by `seq`), shows that a delivery left unacked
comes again on the next Attach, asks who is online, watches a friend add a
device, fans out a group message to the members this gateway hosts, and
exits 0 when every outcome and delivery is as expected.
"""

import os
import sys
import tempfile
import threading
import queue

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = os.path.join(ROOT, "proto")


def generate_stubs():
    """Compiles proto/ into a temporary directory and puts it on sys.path."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="switchyard-py-")
    files = [os.path.join("switchyard", "v1", f)
             for f in ("envelope.proto", "gateway.proto", "admin.proto")]
    status = protoc.main(["protoc", f"-I{PROTO}",
                          f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if status != 0:
        sys.exit(f"protoc failed with status {status}")
    sys.path.insert(0, out)


def main(address):
    generate_stubs()
    import grpc
    from switchyard.v1 import envelope_pb2, gateway_pb2, gateway_pb2_grpc, admin_pb2, admin_pb2_grpc

    channel = grpc.insecure_channel(address)
    gateway = gateway_pb2_grpc.GatewayStub(channel)

    def attach(gateway_id, region):
        """Opens an Attach stream: the first message attaches, later ones ack.
        Returns (deliveries, ack, close, stream); `ack(seq)` acks every
        delivery up to seq, `close()` ends the gateway's side after its acks. A real gateway acks once it handed a delivery to its user's
        connection, in batches: one ack covers everything before it."""
        outgoing = queue.Queue()
        outgoing.put(gateway_pb2.AttachMessage(
            attach=gateway_pb2.AttachRequest(gateway_id=gateway_id, region=region)))

        def requests():
            while True:
                message = outgoing.get()
                if message is None:
                    return
                yield message

        stream = gateway.Attach(requests())
        # The response headers arrive once the sidecar has attached the gateway.
        stream.initial_metadata()
        deliveries = queue.Queue()

        def read():
            try:
                for delivery in stream:
                    deliveries.put(delivery)
            except grpc.RpcError:
                pass  # cancelled

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def ack(seq):
            outgoing.put(gateway_pb2.AttachMessage(ack=gateway_pb2.Ack(seq=seq)))

        def close():
            outgoing.put(None)
            reader.join(timeout=5)  # the sidecar ends its side once ours ended

        return deliveries, ack, close, stream

    _, _, _, stream_a = attach("gw-py-a", "eu")
    deliveries, ack, close, stream_b = attach("gw-py-b", "us")

    gateway.Online(gateway_pb2.OnlineRequest(gateway_id="gw-py-a", user="ada", device="laptop"))
    gateway.Online(gateway_pb2.OnlineRequest(gateway_id="gw-py-b", user="grace", device="phone"))

    def message(text, to="grace"):
        return envelope_pb2.Envelope(sender_user="ada", user=to, payload=text.encode())

    outcome = gateway.Send(gateway_pb2.SendRequest(gateway_id="gw-py-a", envelope=message("hello"))).outcome
    target = outcome.routed.targets[0]
    assert outcome.WhichOneof("result") == "routed", outcome
    assert target.gateway == "gw-py-b" and target.delivered, target
    assert target.route == gateway_pb2.ROUTE_CROSS_REGION, target

    batch = gateway.SendBatch(gateway_pb2.SendBatchRequest(
        gateway_id="gw-py-a",
        envelopes=[message("one"), message("two"), message("later", to="nobody")],
    )).outcomes
    kinds = [o.WhichOneof("result") for o in batch]
    assert kinds == ["routed", "routed", "routed"], kinds
    assert batch[2].routed.stored_offline == gateway_pb2.OFFLINE_REASON_NO_SESSION, batch[2]

    received = [deliveries.get(timeout=5) for _ in range(3)]
    assert [d.envelope.payload for d in received] == [b"hello", b"one", b"two"], received
    # Ack the first two only, then end the stream (a crashing gateway's would
    # just break): the third comes again, same id and seq, on the next Attach.
    ack(received[1].seq)
    close()
    deliveries, ack, close, stream_b = attach("gw-py-b", "us")
    again = deliveries.get(timeout=5)
    assert again.envelope.id == received[2].envelope.id, again
    assert again.seq == received[2].seq, again
    ack(again.seq)

    # Acting for a user this gateway does not host is refused.
    try:
        gateway.Send(gateway_pb2.SendRequest(
            gateway_id="gw-py-a",
            envelope=envelope_pb2.Envelope(sender_user="mallory", user="grace", payload=b"x")))
        sys.exit("a send as a foreign user was accepted")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err

    # Presence: online dots for a friend list, then a watch of one friend.
    dots = gateway.Presence(gateway_pb2.PresenceRequest(gateway_id="gw-py-b", users=["ada", "nobody"])).users
    assert [(p.user, p.online) for p in dots] == [("ada", True), ("nobody", False)], dots
    watching = queue.Queue()
    watching.put(gateway_pb2.WatchMessage(gateway_id="gw-py-b", add_users=["ada"]))

    def watch_requests():
        while (message := watching.get()) is not None:
            yield message

    events = gateway.Watch(watch_requests())
    snapshot = next(events)
    assert snapshot.change == gateway_pb2.PRESENCE_CHANGE_SNAPSHOT and len(snapshot.sessions) == 1, snapshot
    gateway.Online(gateway_pb2.OnlineRequest(gateway_id="gw-py-a", user="ada", device="phone"))
    added = next(events)
    assert added.change == gateway_pb2.PRESENCE_CHANGE_DEVICE_ADDED and added.device == "phone", added
    watching.put(None)
    events.cancel()

    # Group fan-out: the gateway learns which of its users a group delivery is for.
    for gateway_id, user in [("gw-py-a", "ada"), ("gw-py-b", "grace")]:
        gateway.Join(gateway_pb2.GroupRequest(gateway_id=gateway_id, user=user, group="py-room"))
    to_room = envelope_pb2.Envelope(sender_user="ada", group="py-room", payload=b"hi room")
    sent = gateway.Send(gateway_pb2.SendRequest(gateway_id="gw-py-a", envelope=to_room)).outcome
    assert all(t.delivered for t in sent.routed.targets), sent
    room = deliveries.get(timeout=5)
    assert room.envelope.group == "py-room", room
    ack(room.seq)
    hosted = gateway.GroupMembers(gateway_pb2.GroupMembersRequest(
        gateway_id="gw-py-b", group="py-room", hosted_only=True)).members
    assert list(hosted) == ["grace"], hosted

    state = admin_pb2_grpc.AdminStub(channel).State(admin_pb2.StateRequest())
    attached = sorted(g.gateway_id for g in state.gateways)
    assert attached == ["gw-py-a", "gw-py-b"], attached

    stream_a.cancel()
    stream_b.cancel()
    print("python client: 5 messages routed, 4 delivered and acked, 1 redelivered "
          "after a dropped stream, 1 stored offline, 1 refused; presence dots, a watch "
          "event and a group's hosted members")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: client.py HOST:PORT")
    main(sys.argv[1])
