"""The same with AsyncOpenAI: every await returns its answer once the batch has it.

Usage: python async_example.py BASE_URL API_KEY [WHO]
(for instance http://localhost:9487/v1 my-proxy-key: a proxy's base URL and one of its keys)
"""

import argparse
import asyncio
import json

import openai
from batchproxy_client import abulk, async_http_client


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="the proxy's base URL, e.g. http://localhost:9487/v1")
    parser.add_argument("api_key", help="a proxy key (BATCH_SERVER_API_KEY or create_api_key)")
    parser.add_argument("who", nargs="?", default="me", help="a word put in every question")
    return parser.parse_args()


async def main(base_url: str, api_key: str, who: str) -> None:
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key, http_client=async_http_client(deadline=600)
    )
    answers = await abulk(
        [
            lambda i=i: client.embeddings.create(
                model="text-embedding-3-small", input=f"async {i} for {who}"
            )
            for i in range(5)
        ],
        progress=False,
    )
    single = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"async single for {who}"}]
    )
    print(
        json.dumps(
            {
                "single": single.choices[0].message.content,
                "bulk": [len(answer.data[0].embedding) for answer in answers],
            }
        )
    )


asyncio.run(main(**vars(arguments())))
