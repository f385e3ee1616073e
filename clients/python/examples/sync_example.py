"""Ask the proxy five questions with the plain OpenAI SDK and no loop of our own.

Usage: python sync_example.py BASE_URL API_KEY [WHO]
(for instance http://localhost:9487/v1 my-proxy-key: a proxy's base URL and one of its keys)
"""

import argparse
import json

import openai
from batchproxy_client import bulk, http_client


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="the proxy's base URL, e.g. http://localhost:9487/v1")
    parser.add_argument("api_key", help="a proxy key (BATCH_SERVER_API_KEY or create_api_key)")
    parser.add_argument("who", nargs="?", default="me", help="a word put in every question")
    return parser.parse_args()


base_url, api_key, who = vars(arguments()).values()
client = openai.OpenAI(base_url=base_url, api_key=api_key, http_client=http_client(deadline=600))

# One call: returns when the batch has answered it.
single = client.responses.create(model="gpt-4.1-mini", input=f"single for {who}")

# Many calls at once, answers in the order asked.
answers = bulk(
    [
        lambda i=i: client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"bulk {i} for {who}"}]
        )
        for i in range(4)
    ],
    concurrency=4,
)
print(
    json.dumps(
        {
            "single": single.output_text,
            "bulk": [answer.choices[0].message.content for answer in answers],
        }
    )
)
