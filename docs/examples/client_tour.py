"""A tour of heaper_trio.client (docs/client.md): log in, heaps, blocks, delta, an upload
that resumes after an interruption, a live subscription.

    python docs/examples/client_tour.py http://127.0.0.1:8470 me.key photo.jpg
"""

import sys
import uuid
from pathlib import Path

import trio

from heaper_trio.client import HeaperClient, LocalBlock, UploadProgress, load_or_create_keypair
from heaper_trio.client import documents as d


class Interrupted(Exception):
    """Stands for a lost connection or a killed client."""


async def main(server: str, key_file: str, photo: Path) -> dict:
    async with HeaperClient(server, load_or_create_keypair(key_file)) as client:
        await client.login()  # LoginPending while an admin has not approved the key

        # -- heaps
        heap = await client.heaps.create("Travel")
        print([h.name for h in await client.heaps.list()])

        # -- blocks: build with pycrdt, push; the answer is merged into note.doc
        note = LocalBlock(heap.id, str(uuid.uuid4()), d.new_block("document", "Packing list"))
        d.append_paragraph(note.doc, "Passport and ", ("tickets", {"bold": {}}))
        result = await client.blocks.push(note)
        print(result.status, note.sync_version)  # created 1

        # a second device fetches the block, edits and pushes; the first pulls and merges
        laptop = await client.blocks.fetch(heap.id, note.block_id)
        d.append_paragraph(laptop.doc, "Charger")
        await client.blocks.push(laptop)
        await client.blocks.pull(note)
        print(d.read_block(note.doc).text)  # Passport and tickets / Charger

        # -- delta: every block changed since a time; keep the last server_time for next time
        since = 0
        async for page in client.blocks.changes(heap.id, since):
            print([b["title"] for b in page.changed_blocks])
            since = page.server_time

        # -- a resumable upload, with progress; the first attempt stops after one chunk
        progress: list[float] = []

        def stop_after_one_chunk(p: UploadProgress) -> None:
            progress.append(p.fraction)
            if p.chunks_sent == 1:
                raise Interrupted

        photo_block = str(uuid.uuid4())  # a new "file" block, titled with the file's name
        try:
            await client.uploads.upload(
                heap.id, photo_block, photo, chunk_size=131_072, progress=stop_after_one_chunk
            )
        except* Interrupted:
            print("interrupted at", f"{progress[-1]:.0%}")
        upload = await client.uploads.upload(
            heap.id,
            photo_block,
            photo,
            chunk_size=131_072,
            progress=lambda p: progress.append(p.fraction),
        )
        print(upload.status, upload.file_id, "resumed", upload.chunks_resumed, "chunks")

        # -- live: the document follows every change as it happens
        async with client.live.subscribe(note) as live:
            d.append_paragraph(laptop.doc, "Sunglasses")  # another device, over HTTP
            await client.blocks.push(laptop)
            await live.next_update()  # already applied to note.doc
            d.append_paragraph(note.doc, "typed on the phone")  # sent as it is made
            await live.wait_stored()  # acknowledged: durably stored
        return {
            "upload": upload,
            "progress": progress,
            "live_text": d.read_block(note.doc).text,
        }


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], Path(sys.argv[3]))
