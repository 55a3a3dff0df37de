"""A small notes app: a form, a redirect after POST, a cookie session counting visits."""

from flask import Flask, redirect, request, session, url_for
from markupsafe import escape

app = Flask(__name__)
app.secret_key = "change me: an environment variable in real life"
NOTES: list[str] = []  # per instance: a real app keeps them in a database


@app.get("/")
def index() -> str:
    session["visits"] = session.get("visits", 0) + 1
    items = "".join(f"<li>{escape(n)}</li>" for n in NOTES)
    return (
        f"<p>visit {session['visits']}</p><ul>{items}</ul>"
        '<form method="post" action="notes"><input name="note"><button>add</button></form>'
    )


@app.post("/notes")
def add_note():  # type: ignore[no-untyped-def]
    NOTES.append(request.form["note"])
    return redirect(url_for("index"))
