"""Message framing against numpy: arrays come back bit for bit, and the MAC refuses what the key did not sign."""
import numpy as np
import pytest
import zmq

from hvdkit.ps import transport, wire


@pytest.mark.parametrize("key", [None, b"k" * 32])
def test_arrays_round_trip_bit_for_bit(key):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(1001).astype(np.float32), np.arange(6, dtype=np.int64).reshape(2, 3),
              np.zeros(0, np.float32), rng.integers(-128, 127, 17).astype(np.int8),
              np.array([np.nan, np.inf, -0.0], np.float16)]
    header, back = wire.decode(wire.encode({"op": "x", "n": 3}, arrays, key), key)
    assert header == {"op": "x", "n": 3}
    for a, b in zip(arrays, back, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def test_zero_copy_send_and_receive_over_zeromq():
    context = zmq.Context()
    try:
        address = transport.free_addresses(1)[0]
        router = transport.bind_router(context, address)
        dealer = transport.connect_dealer(context, address)
        big = np.arange(200_000, dtype=np.float32)  # above pyzmq's copy threshold: sent from big's memory
        transport.send(dealer, None, wire.encode({"op": "p"}, [big], b"s"))
        assert router.poll(5000)
        _, frames = transport.recv(router)
        header, (back,) = wire.decode(frames, b"s")
        assert header["op"] == "p" and np.array_equal(back, big) and not back.flags.owndata
        assert wire.nbytes(frames) == big.nbytes + len(frames[0].bytes) + wire.MAC_BYTES
    finally:
        context.destroy(linger=0)


@pytest.mark.parametrize("tamper", ["key", "value", "nomac", "header"])
def test_messages_not_signed_with_the_key_are_refused(tamper):
    frames = wire.encode({"op": "step"}, [np.ones(4, np.float32)], b"a" * 32)
    key = b"a" * 32
    if tamper == "key":
        key = b"b" * 32
    elif tamper == "value":
        frames[1] = np.full(4, 2, np.float32)
    elif tamper == "nomac":
        frames = frames[:-1]
    else:
        frames[0] = frames[0].replace(b"step", b"join")
    with pytest.raises(wire.WireError):
        wire.decode(frames, key)


def test_malformed_frames_are_refused():
    with pytest.raises(wire.WireError, match="names 1 arrays"):
        wire.decode(wire.encode({"op": "x"}, [np.ones(2)])[:1])
    with pytest.raises(wire.WireError, match="header"):
        wire.decode([b"not json"])


@pytest.mark.parametrize("address", ["tcp://*:5555", "tcp://0.0.0.0:1", "ipc:///tmp/x", "tcp://h:port"])
def test_addresses_must_name_one_interface(address):
    with pytest.raises(ValueError, match="address"):
        transport.bind_router(zmq.Context.instance(), address)
