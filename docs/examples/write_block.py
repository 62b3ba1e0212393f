"""Write a Heaper block with pycrdt alone and push it over HTTP (docs/documents.md).

python docs/examples/write_block.py http://127.0.0.1:8470 me.key
"""

import base64
import sys
import time
import uuid

import trio
from pycrdt import Array, Doc, Map, XmlElement, XmlFragment, XmlText

from heaper_trio.client import HeaperClient, load_or_create_keypair


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def paragraph(parent, *runs):
    """Append a <paragraph> to ``parent``: runs are text, (text, marks) or inline nodes."""
    node = parent.children.append(XmlElement("paragraph"))
    text = None
    for run in runs:
        if isinstance(run, XmlElement):  # an inline node: a mention, a page link
            node.children.append(run)
            text = None
            continue
        chunk, marks = (run, None) if isinstance(run, str) else run
        if text is None:
            text = node.children.append(XmlText())
        text.insert(len(text), chunk, marks)  # a mark is a formatting attribute
    return node


def build_block(title: str, tag_id: str, linked_id: str) -> Doc:
    now = int(time.time() * 1000)  # times are Unix milliseconds
    doc = Doc()
    with doc.transaction():  # one transaction: one update
        meta = doc.get("meta_v0", type=Map)
        meta["type"] = "document"
        meta["created_at"] = now

        paragraph(doc.get("title_v0", type=XmlFragment), title)

        content = doc.get("content_v0", type=XmlFragment)
        heading = content.children.append(XmlElement("heading", {"level": 2}))
        heading.children.append(XmlText("Plan"))
        paragraph(
            content,
            "Ask ",
            XmlElement("reference", {"id": tag_id, "label": "Ideas", "type": "mention"}),
            " about the ",
            ("garden", {"bold": {}}),
            ", see ",
            XmlElement("pagelink", {"blockKey": linked_id}),
            " and ",
            ("the wiki", {"link": {"href": "https://example.com/wiki"}}),
            ".",
        )
        items = content.children.append(XmlElement("bulletList"))
        for line in ("seeds", "soil"):
            item = items.children.append(XmlElement("listItem"))
            paragraph(item, line)

        # tags: key = the tag block's id, value = a map with at least "type": "tag"
        doc.get("relations_v1", type=Map)[tag_id] = Map({"type": "tag", "created_at": now})
        # a saved view on this block
        doc.get("apps_v0", type=Map)["board-1"] = Map(
            {"type": "board", "sort": "title", "filter": Array(["tag", tag_id])}
        )
    return doc


async def push(client: HeaperClient, heap_id: str, block_id: str, update: bytes, doc: Doc) -> dict:
    """POST /api/sync/push for one block; merge what the server answers we lack."""
    item = {
        "block_id": block_id,
        "workspace_id": heap_id,
        "update": b64(update),
        "state_vector": b64(doc.get_state()),
    }
    r = await client.post("/api/sync/push", json={"blocks": [item]})
    r.raise_for_status()
    [answer] = r.json()["blocks"]
    if answer["status"] not in ("created", "ok"):
        raise RuntimeError(f"push refused: {answer}")
    doc.apply_update(base64.b64decode(answer["update"]))
    return answer


async def main(server: str, key_file: str) -> dict:
    async with HeaperClient(server, load_or_create_keypair(key_file)) as client:
        await client.login()
        r = await client.post("/api/heap/add", json={"name": "Garden"})
        heap_id = r.json()["heap"]["id"]

        # the tag is a block too: meta_v0.type "tag", its title is the tag's name
        tag_id, block_id, linked_id = (str(uuid.uuid4()) for _ in range(3))
        tag = Doc()
        with tag.transaction():
            tag.get("meta_v0", type=Map)["type"] = "tag"
            paragraph(tag.get("title_v0", type=XmlFragment), "Ideas")
        await push(client, heap_id, tag_id, tag.get_update(), tag)

        doc = build_block("Spring plan", tag_id, linked_id)
        answer = await push(client, heap_id, block_id, doc.get_update(), doc)
        print(answer["status"], "at sync_version", answer["sync_version"])  # created, 1

        # later edits travel as the difference from what the server has
        server_has = base64.b64decode(answer["state_vector"])
        paragraph(doc.get("content_v0", type=XmlFragment), "Water daily.")
        await push(client, heap_id, block_id, doc.get_update(server_has), doc)

        block = (await client.post(f"/api/block/{block_id}")).json()
        print(block["block"]["title"], "|", block["text"])

        # to the trash: a CRDT edit of meta_v0.deleted_at
        before = doc.get_state()
        doc.get("meta_v0", type=Map)["deleted_at"] = int(time.time() * 1000)
        await push(client, heap_id, block_id, doc.get_update(before), doc)
        trash = (await client.get(f"/api/trash/{heap_id}")).json()

        # and back: remove deleted_at
        before = doc.get_state()
        del doc.get("meta_v0", type=Map)["deleted_at"]
        await push(client, heap_id, block_id, doc.get_update(before), doc)
        return {
            "heap_id": heap_id,
            "block_id": block_id,
            "tag_id": tag_id,
            "linked_id": linked_id,
            "block": block,
            "trash": trash,
        }


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
