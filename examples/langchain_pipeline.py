"""sotflow in a LangChain pipeline: prompt | ChatSotflow (SoT) | parser, and a tool call."""

from __future__ import annotations

import asyncio

from _setup import backend
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

import sotflow
from sotflow.integrations.langchain import ChatSotflow

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer for a busy reader."), ("human", "How can a {who} improve their {what}?")]
)


def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


async def main(api: sotflow.OpenAIBackend) -> None:
    async with ChatSotflow(backend=api, strategy="sot") as model:
        chain = PROMPT | model | StrOutputParser()
        print(await chain.ainvoke({"who": "student", "what": "focus"}))

        # Streams in reading order; each graph node also shows up as a custom event.
        async for event in chain.astream_events(
            {"who": "manager", "what": "meetings"}, version="v2"
        ):
            if event["event"] == "on_custom_event" and event["name"] == "sotflow_node":
                print(f"\n[{event['data']['node']} done in {event['data']['duration_s']:.2f} s]")
            elif event["event"] == "on_parser_stream":
                print(event["data"]["chunk"], end="", flush=True)
        print()

        # The message carries what answered and what it cost.
        reply = await model.ainvoke("How can I sleep better?")
        print(f"\nstrategy {reply.response_metadata['strategy']}, {reply.usage_metadata}")

        # A call with tools goes to the model as it is: one direct call.
        call = await model.bind_tools([word_count]).ainvoke("Use word_count on 'a b c'.")
        print(f"tool calls: {call.tool_calls}")

        # Batches run concurrently under the backend's shared limits.
        answers = await chain.abatch(
            [{"who": "runner", "what": "pace"}, {"who": "writer", "what": "style"}],
            config={"max_concurrency": 2},
        )
        print(f"\n{len(answers)} answers in a batch")


if __name__ == "__main__":
    with backend() as api:
        asyncio.run(main(api))
