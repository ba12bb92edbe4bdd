"""A small Flask app for the tests."""
import os

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/")
def index():
    return "hello from flask\n"


@app.route("/env")
def env():
    return jsonify(script_name=request.environ.get("SCRIPT_NAME"), path_info=request.environ.get("PATH_INFO"),
                   url=request.url, remote_addr=request.remote_addr, pid=os.getpid(),
                   url_for_index=request.script_root + "/")


@app.route("/echo", methods=["POST"])
def echo():
    data = request.get_data()
    return jsonify(length=len(data), form=request.form.to_dict(), json=request.get_json(silent=True))
