from twisted.application.service import ServiceMaker

chat = ServiceMaker(
    "chat",
    "chat.tap",
    "A chat server compatible with the course chat protocol.",
    "chat",
)
