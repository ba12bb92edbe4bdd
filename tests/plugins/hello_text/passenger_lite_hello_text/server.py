"""The hello-text worker: answers every request on $PASSENGER_LITE_SOCKET with $HELLO_FILE."""
import asyncio
import os
import signal


async def main() -> None:
    body = open(os.environ["HELLO_FILE"], "rb").read()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")  # plugin-sized: requests without a body
                writer.write(head + (b"" if request.startswith(b"HEAD ") else body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_unix_server(serve, os.environ["PASSENGER_LITE_SOCKET"])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


asyncio.run(main())
