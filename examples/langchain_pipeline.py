"""sotflow as one step of a LangChain pipeline: prompt | SoT | parser."""

from __future__ import annotations

import asyncio

from _setup import backend
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

import sotflow
from sotflow.integrations.langchain import SotflowRunnable

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer for a busy reader."), ("human", "How can a {who} improve their {what}?")]
)


async def main(model: sotflow.OpenAIBackend) -> None:
    step = SotflowRunnable(strategy=sotflow.SkeletonOfThought(), backend=model)
    chain = PROMPT | step | StrOutputParser()

    print(await chain.ainvoke({"who": "student", "what": "focus"}))

    # Streams in reading order; each graph node also shows up as a custom event.
    async for event in chain.astream_events({"who": "manager", "what": "meetings"}, version="v2"):
        if event["event"] == "on_custom_event" and event["name"] == "sotflow_node":
            print(f"\n[{event['data']['node']} done in {event['data']['duration_s']:.2f} s]")
        elif event["event"] == "on_parser_stream":
            print(event["data"]["chunk"], end="", flush=True)
    print()

    # Batches run concurrently under the backend's shared limits.
    answers = await chain.abatch(
        [{"who": "runner", "what": "pace"}, {"who": "writer", "what": "style"}],
        config={"max_concurrency": 2},
    )
    print(f"\n{len(answers)} answers in a batch")


if __name__ == "__main__":
    with backend() as model:
        asyncio.run(main(model))
