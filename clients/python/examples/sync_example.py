"""Ask the proxy five questions with the plain OpenAI SDK and no loop of our own.

Usage: python sync_example.py BASE_URL API_KEY WHO
"""

import json
import sys

import openai
from batchproxy_client import bulk, http_client

base_url, api_key, who = sys.argv[1:4]
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
