// The result of a run in the page: GIFs play inline with a frame scrubber (WebCodecs'
// ImageDecoder, where the browser has it), MP4 in a <video> with its own controls, PNG
// frame folders as an image with a slider.
import { api } from "./api.js";

const el = (tag, props = {}, children = []) => {
  const e = Object.assign(document.createElement(tag), props);
  for (const c of children) e.append(c);
  return e;
};

export async function showOutputs(panel, outputs) {
  panel.replaceChildren(el("h2", { textContent: "Result" }));
  if (!outputs.length) {
    panel.append(el("p", { className: "hint", textContent: "The run wrote no previewable output." }));
    return;
  }
  for (const out of outputs) {
    const box = el("div", { className: "output" });
    box.dataset.kind = out.kind;
    panel.append(box);
    if (out.kind === "gif" || out.kind === "image") await gif(box, out);
    else if (out.kind === "video") {
      box.append(el("video", { id: "preview-media", src: out.url, controls: true, autoplay: true, loop: true, muted: true }));
    } else if (out.kind === "frames") await frames(box, out);
    box.append(el("div", { className: "path", textContent: `node ${out.node}: ${out.path}` }));
    const link = el("a", { href: out.url, textContent: "download", download: "" });
    box.append(link);
  }
}

async function gif(box, out) {
  const img = el("img", { id: "preview-media", src: out.url, alt: out.path });
  box.append(img);
  if (out.kind !== "gif" || typeof ImageDecoder === "undefined") return;
  try {
    const bytes = await (await fetch(out.url)).arrayBuffer();
    const decoder = new ImageDecoder({ data: bytes, type: "image/gif" });
    await decoder.tracks.ready;
    const count = decoder.tracks.selectedTrack.frameCount;
    if (count < 2) return;
    const canvas = el("canvas", { hidden: true });
    const slider = el("input", { id: "scrub", type: "range", min: 0, max: count - 1, value: 0, title: "scrub frames" });
    const label = el("span", { textContent: `playing · ${count} frames` });
    const play = el("button", { textContent: "Play" });
    slider.addEventListener("input", async () => {
      const { image } = await decoder.decode({ frameIndex: Number(slider.value) });
      canvas.width = image.displayWidth;
      canvas.height = image.displayHeight;
      canvas.getContext("2d").drawImage(image, 0, 0);
      image.close();
      img.hidden = true;
      canvas.hidden = false;
      label.textContent = `frame ${Number(slider.value) + 1}/${count}`;
    });
    play.addEventListener("click", () => {
      img.hidden = false;
      canvas.hidden = true;
      label.textContent = `playing · ${count} frames`;
    });
    box.append(canvas, slider, el("div", {}, [play, " ", label]));
  } catch (e) {
    console.warn("frame scrubbing unavailable:", e);
  }
}

async function frames(box, out) {
  const { files } = await api.outputFolder(out.url);
  const images = files.filter((f) => /\.(png|jpe?g)$/i.test(f));
  if (!images.length) return;
  const img = el("img", { id: "preview-media", src: images[0] });
  const slider = el("input", { id: "scrub", type: "range", min: 0, max: images.length - 1, value: 0 });
  const label = el("span", { textContent: `frame 1/${images.length}` });
  slider.addEventListener("input", () => {
    img.src = images[Number(slider.value)];
    label.textContent = `frame ${Number(slider.value) + 1}/${images.length}`;
  });
  box.append(img, slider, label);
}
