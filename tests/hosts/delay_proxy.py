"""A TCP relay that adds a fixed one-way delay in each direction, for
hosts.netns where the kernel has no netem (tc qdisc netem).

    delay_proxy.py LISTEN_HOST TARGET_HOST:PORT DELAY_MS

Listens on an ephemeral port of LISTEN_HOST, prints `ready delay-proxy
port=N`, and relays every connection to TARGET, each chunk in each
direction held DELAY_MS before it is written (in order, pipelined: like
link latency, not a bandwidth limit). Runs until killed."""
import asyncio
import sys


async def pump(reader, writer, delay):
    """Copy reader to writer, each chunk written `delay` s after it came."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def later():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(later())
    try:
        while True:
            data = await reader.read(65536)
            await queue.put((loop.time() + delay, data or None))
            if not data:
                break
    except (ConnectionError, OSError):
        await queue.put((loop.time(), None))
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def main():
    host, target, delay_ms = sys.argv[1], sys.argv[2], float(sys.argv[3])
    thost, tport = target.rsplit(":", 1)
    delay = delay_ms / 1000.0

    async def handle(creader, cwriter):
        try:
            sreader, swriter = await asyncio.open_connection(thost, int(tport))
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(pump(creader, swriter, delay), pump(sreader, cwriter, delay),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, host, 0)
    print("ready delay-proxy port=%d" % server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()  # until killed (the test's PDEATHSIG)


if __name__ == "__main__":
    asyncio.run(main())
