"""
A text heatmap
==============

Relevance per word, drawn as coloured word boxes: red for evidence for the explained class, blue
against it. The model is tiny and trained by scikit-learn in a moment on attribx's generated
sentiment data (``make_sentiment``), whose deciding words are known: a bag of words (an embedding
lookup summed over the sentence, one hidden layer) that reads token ids, written into an attribx graph
with an ``embedding`` node. Padding gets no relevance and is drawn grey.
"""
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from sklearn.neural_network import MLPClassifier

import attribx
from attribx import textviz
from attribx.datasets import make_sentiment

data = make_sentiment(1500, seed=0, negation_rate=0.0)    # without negations a bag of words decides
vocab = len(data.vocab)
counts = np.zeros((len(data.ids), vocab))
np.add.at(counts, (np.arange(len(data.ids))[:, None], data.ids), 1.0)
counts[:, data.pad_id] = 0.0
clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=500, random_state=0).fit(counts[:1000], data.labels[:1000])
print(f"held-out accuracy: {clf.score(counts[1000:], data.labels[1000:]):.3f}")

# %%
# The same network as an attribx graph: a one-hot lookup per token (the padding row zero), summed over
# the sentence, then the MLP's layers. Its two outputs are ∓ half the sklearn network's logit for
# "positive", so either class can be explained.
W1, W2 = clf.coefs_
b1, b2 = clf.intercepts_
one_hot = np.eye(vocab)
one_hot[data.pad_id] = 0.0
b = attribx.GraphBuilder("bag-of-words")
ids = b.input("ids", (data.ids.shape[1],), layout="NT", dtype="int64")
h = b.reduce_sum(b.add_node("embedding", ids, name="lookup", params={"weight": one_hot}), axes=1)
h = b.relu(b.linear(h, W1.T, b1, name="hidden"))
out = b.linear(h, np.concatenate([-W2.T, W2.T]) / 2, np.concatenate([-b2, b2]) / 2, name="logit")
graph = b.build(out)
agree = (attribx.forward(graph, data.ids[1000:]).argmax(1) == clf.predict(counts[1000:])).mean()
print(f"graph and sklearn agree on {agree:.0%} of held-out sentences")

# %%
# Explain six held-out sentences with LRP-ε and draw them. ``render_png`` writes a picture file
# (``render_html`` a standalone page); here it is read back to show it.
sample = np.arange(1000, 1006)
rel = attribx.explain(graph, data.ids[sample], "lrp.epsilon", target="predicted",
                      tokens=data.token_text[sample], pad_id=data.pad_id, labels=data.labels[sample])
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "sentences.png")
    textviz.render_png(rel, path, class_names=["negative", "positive"], width=9.0)
    picture = plt.imread(path)
fig, ax = plt.subplots(figsize=(picture.shape[1] / 100, picture.shape[0] / 100), dpi=100)
ax.imshow(picture)
ax.set_axis_off()
fig.subplots_adjust(0, 0, 1, 1)

# %%
# The deciding words of these sentences, as the data set knows them, next to the word the relevance
# ranks first:
for i, s in enumerate(sample):
    words = np.array(data.tokens[s])
    top = words[np.argmax(np.abs(rel.values[i][: len(words)]))]
    print(f"{' '.join(words):55s} deciding: {', '.join(words[data.deciding[s][: len(words)]])}   top: {top}")
