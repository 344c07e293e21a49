"""Reads each message file named on the command line with Python's email
package (policy.default, as Python mail tools read mail) and prints one JSON
object per file: every defect the parser found, in the message, in any
part, or in any header, and what a reader sees (subject, parts, file names,
text). The Go test TestDeliveredMessagesReadCleanlyInPython runs it.
"""
import email
import email.message
import email.policy
import json
import sys


def check(path):
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    defects = []
    parts = []
    for part in msg.walk():
        kind = part.get_content_type()
        defects += ["%s: %r" % (kind, d) for d in part.defects]
        for name, value in part.items():
            defects += ["%s header %s: %r" % (kind, name, d) for d in getattr(value, "defects", ())]
        info = {
            "type": kind,
            "filename": part.get_filename(),
            "disposition": part.get_content_disposition(),
            "cte": str(part.get("content-transfer-encoding", "")),
        }
        if part.get_content_maintype() == "multipart":
            if info["filename"] is not None:  # a multipart attachment
                parts.append(info)
            continue
        try:
            content = part.get_content()
        except Exception as e:  # get_content raises on what it cannot read
            defects.append("%s: get_content: %r" % (kind, e))
            content = None
        if isinstance(content, email.message.EmailMessage):
            info["inner_subject"] = str(content["subject"])
        elif isinstance(content, str):
            info["text"] = content
        elif content is not None:
            info["size"] = len(content)
        parts.append(info)
    return {
        "path": path,
        "defects": defects,
        "subject": str(msg["subject"]),
        "parts": parts,
    }


if __name__ == "__main__":
    print(json.dumps([check(p) for p in sys.argv[1:]]))
