"""The explorer page (Gradio): see, point at, retrieve and edit the concepts of an image.

Annotations are evaluated here (no ``from __future__ import annotations``): Gradio reads the
handlers' parameter types to pass the click coordinates (``gr.SelectData``) and the progress
bar.
"""

import functools
import logging
from pathlib import Path

import gradio as gr

from stellar.explore.core import (
    DROP_TEXT,
    SWAP_TEXT,
    change_map,
    drop_token,
    encode_image,
    render_views,
    swap_token,
    token_at,
)
from stellar.explore.explorer import Explorer
from stellar.images import open_image
from stellar.viz.retrieve import neighbour_tiles

logger = logging.getLogger(__name__)

CELL = 384  # side of the large pictures; clicks are read in these pixels


def _guard(n_outputs: int):
    """Turn an exception of ``fn`` into a message in the status line (its last output), never a
    traceback: bad input is said as it is, anything unexpected is logged with its trace."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ValueError as err:  # UsageError included: bad input, said as it is
                message = str(err)
            except Exception as err:  # noqa: BLE001 - the page shows a message, the log the trace
                logger.exception("explorer: %s failed", fn.__name__)
                message = f"internal error ({type(err).__name__}: {err}); see the server log"
            return (*[gr.update()] * (n_outputs - 1), f"**Error:** {message}")

        return run

    return wrap


def _picture(label: str, elem_id: str, height: int = 320, scale: int = 1) -> gr.Image:
    return gr.Image(
        label=label, interactive=False, format="png", height=height, elem_id=elem_id, scale=scale
    )


def build_app(explorer: Explorer) -> gr.Blocks:
    """The page for ``explorer``'s model; launch it with ``.launch(server_name=...)``."""
    model = explorer.model
    r = model.num_tokens
    token_choices = [(f"t{k}", k) for k in range(r)]
    picks = [str(p) for p in explorer.picks]

    def views(state, shown, message):
        enc = state["enc"]
        pictures = render_views(enc, shown, state["selected"], cell=CELL)
        if explorer.why_not is not None:
            message += f" No reconstruction: {explorer.why_not}."
        return (
            state,
            pictures["concepts"],
            pictures["argmax"],
            state["recon"],
            pictures["tokens"],
            pictures["pca_dense"],
            pictures["pca_lowrank"],
            pictures["legend"],
            state["selected"],
            message,
        )

    def need_image(state) -> dict:
        if state is None:
            raise ValueError("open an image first: upload one or pick one above")
        return state

    @_guard(12)
    def open_file(path):
        if path is None:
            raise ValueError("no file was uploaded")
        enc = encode_image(model, open_image(path), name=Path(path).name)
        state = {
            "enc": enc,
            "recon": explorer.reconstruct(enc.sparse, enc.spatial, enc.grid, CELL),
            "selected": None,
            "sparse": enc.sparse,
            "spatial": enc.spatial,
            "neighbours": [],
            "source": None,
        }
        every = list(range(r))
        out = views(state, every, f"Opened **{enc.name}**: click a region to select its concept.")
        return (*out[:-1], every, [], out[-1])

    @_guard(12)
    def pick(evt: gr.SelectData):
        return open_file.__wrapped__(picks[evt.index])

    @_guard(10)
    def point(x, y, shown, state):
        state = need_image(state)
        state["selected"] = token_at(state["enc"].spatial, state["enc"].grid, (x, y), CELL)
        k = state["selected"]
        return views(state, shown, f"Selected **t{k}** (it owns the patch at {x:.0f}, {y:.0f}).")

    @_guard(10)
    def click(shown, state, evt: gr.SelectData):
        return point.__wrapped__(evt.index[0], evt.index[1], shown, state)

    @_guard(10)
    def redraw(selected, shown, state):
        state = need_image(state)
        state["selected"] = None if selected is None else int(selected)
        return views(state, shown, "")

    @_guard(4)
    def retrieve(k, state, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio's API
        state = need_image(state)
        token = state["selected"]
        if token is None:
            raise ValueError("select a token first: click a region of the image")
        collection = explorer.collection
        found = collection.neighbours(state["enc"].sparse[token], int(k))
        index = collection.index()
        state["neighbours"], state["source"] = found, None
        gallery = neighbour_tiles(
            [
                (n.encoded.image, n.encoded.spatial, n.token, n.similarity, n.encoded.name)
                for n in found
            ],
            state["enc"].grid,
        )
        info = (
            f"Nearest concept tokens to **t{token}** of {state['enc'].name} among "
            f"{len(index)} tokens of {len(index.paths)} images (cosine similarity). Index "
            f"`{collection.index_dir}`, weights fingerprint `{index.meta['weights']}`. Click a "
            "neighbour to make it the source of a swap."
        )
        return state, gallery, info, f"Retrieved {len(found)} neighbours of t{token}."

    @_guard(2)
    def choose_source(state, evt: gr.SelectData):
        state = need_image(state)
        state["source"] = state["neighbours"][evt.index]
        nb = state["source"]
        return state, f"Swap source: **t{nb.token}** of {nb.encoded.name}."

    def edited(state, text):
        enc = state["enc"]
        before, after = enc.lowrank, state["spatial"] @ state["sparse"]
        changed = int((before != after).any(-1).sum())  # patches whose row of Z differs
        text += (
            f"\n\nZ = L·S now differs from the image's own at **{changed} of "
            f"{before.shape[0]} patches** (right: ‖ΔZ‖ per patch)."
        )
        recon = explorer.reconstruct(state["sparse"], state["spatial"], enc.grid, CELL)
        if recon is None:
            text += f"\n\nThe reconstruction cannot be drawn: {explorer.why_not}."
        return state, recon, change_map(before, after, enc.grid, CELL), text, "Edit applied."

    @_guard(5)
    def drop(state):
        state = need_image(state)
        k = state["selected"]
        if k is None:
            raise ValueError("select the token to drop first: click its region")
        state["spatial"] = drop_token(state["spatial"], k)
        return edited(state, DROP_TEXT.format(k=k))

    @_guard(5)
    def swap(state):
        state = need_image(state)
        k, nb = state["selected"], state["source"]
        if k is None or nb is None:
            raise ValueError("select a token, retrieve its neighbours and click one to swap in")
        state["sparse"] = swap_token(state["sparse"], k, nb.encoded.sparse[nb.token])
        return edited(state, SWAP_TEXT.format(k=k, j=nb.token, name=nb.encoded.name))

    @_guard(5)
    def reset(state):
        state = need_image(state)
        state["sparse"], state["spatial"] = state["enc"].sparse, state["enc"].spatial
        return state, None, None, "Edits undone.", "Edits undone."

    with gr.Blocks(title="STELLAR concept explorer", analytics_enabled=False) as page:
        gr.Markdown("# STELLAR concept explorer\n" + explorer.describe())
        state = gr.State(None)
        with gr.Row():
            upload = gr.UploadButton("Upload an image", type="filepath", elem_id="upload")
            status = gr.Markdown("Pick an image below or upload one.", elem_id="status")
        picker = gr.Gallery(
            picks,
            label="Examples and collection: click one to open it",
            columns=12,
            height=150,
            allow_preview=False,
            elem_id="picker",
        )
        with gr.Row():
            concepts = _picture("Concept regions: click one to select its token", "concepts")
            argmax = _picture("Argmax concept (click works here too)", "argmax")
            recon = _picture("Reconstruction", "recon")
        legend = gr.HTML(elem_id="legend-box")
        with gr.Row():
            selected = gr.Dropdown(token_choices, value=None, label="Selected token")
            shown = gr.CheckboxGroup(token_choices, value=list(range(r)), label="Tokens drawn")
        with gr.Row():
            pca_dense = _picture("PCA of dense features", "pca-dense", 240)
            pca_lowrank = _picture("PCA of low-rank L·S", "pca-lowrank", 240)
            token_maps = _picture("Per-token maps (each scaled to its peak)", "token-maps", 240, 2)
        gr.Markdown("## Retrieve: where else does the selected concept occur?")
        with gr.Row():
            k = gr.Slider(1, 32, value=8, step=1, label="neighbours")
            find = gr.Button("Find the selected concept in the collection", elem_id="find")
        info = gr.Markdown()
        gallery = gr.Gallery(
            label="Nearest concept tokens",
            columns=8,
            height=220,
            allow_preview=False,
            elem_id="neighbours",
            format="png",
        )
        gr.Markdown(
            "## Edit: change L or S and decode Z = L·S again\n"
            + DROP_TEXT.format(k="k")
            + "\n\n"
            + SWAP_TEXT.format(k="k", j="j", name="the neighbour clicked above")
        )
        with gr.Row():
            drop_btn = gr.Button("Drop the selected token", elem_id="drop")
            swap_btn = gr.Button("Swap in the clicked neighbour", elem_id="swap")
            reset_btn = gr.Button("Undo all edits")
        edit_text = gr.Markdown(elem_id="edit-text")
        with gr.Row():
            edited_recon = _picture("Edited reconstruction", "edited")
            delta = _picture("‖ΔZ‖ per patch", "delta")
        x = gr.Number(visible=False)
        y = gr.Number(visible=False)
        point_btn = gr.Button(visible=False)

        shown_views = [
            state,
            concepts,
            argmax,
            recon,
            token_maps,
            pca_dense,
            pca_lowrank,
            legend,
            selected,
            status,
        ]
        opened = [*shown_views[:-1], shown, gallery, status]
        edit_out = [state, edited_recon, delta, edit_text, status]
        upload.upload(open_file, [upload], opened, api_name="open")
        picker.select(pick, None, opened, api_visibility="private")
        for picture in (concepts, argmax):
            picture.select(click, [shown, state], shown_views, api_visibility="private")
        point_btn.click(point, [x, y, shown, state], shown_views, api_name="point")
        selected.input(redraw, [selected, shown, state], shown_views, api_name="select")
        shown.input(redraw, [selected, shown, state], shown_views, api_name="show")
        find.click(retrieve, [k, state], [state, gallery, info, status], api_name="retrieve")
        gallery.select(choose_source, [state], [state, status], api_visibility="private")
        drop_btn.click(drop, [state], edit_out, api_name="drop")
        swap_btn.click(swap, [state], edit_out, api_name="swap")
        reset_btn.click(reset, [state], edit_out, api_name="reset")
    return page
