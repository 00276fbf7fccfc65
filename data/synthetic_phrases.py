"""Phrase banks the synthetic transcripts are assembled from, grouped by speaker, purpose, sentiment and empathy level.

Placeholders: {product}, {issue}, {request}, {agent}, {company}. Many phrasings per slot, so that a
transcript model has to learn the register (empathic or curt, angry or pleased) rather than memorise a string.
"""
from __future__ import annotations

COMPANY = "Northwind"

AGENT_NAMES = (
    "Amira", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemi", "Liam",
    "Maya", "Nikhil", "Olga", "Pedro", "Queenie", "Rosa", "Sami", "Tariq", "Uma", "Victor", "Wen", "Yusuf",
)

PRODUCTS = (
    "broadband router", "mobile plan", "smart thermostat", "laptop", "washing machine", "streaming subscription",
    "fibre connection", "phone", "smart TV", "home insurance policy", "electricity account", "coffee machine",
    "wireless earbuds", "tablet", "security camera", "dishwasher", "gaming console", "fitness tracker",
)

ISSUES = (
    "keeps dropping out", "stopped working after the last update", "won't turn on at all",
    "arrived damaged", "is much slower than you promised", "keeps restarting on its own",
    "shows an error code every morning", "was cut off without any warning", "never got delivered",
    "was billed twice this month", "makes a horrible grinding noise", "lost all my settings",
    "won't connect to anything", "broke after two weeks", "keeps overheating", "was installed wrong",
)

REQUESTS = (
    "change my billing address", "upgrade my plan", "check when my contract ends", "add a second user",
    "set up a direct debit", "ask about the loyalty discount", "move my installation appointment",
    "update my payment card", "find out how the new feature works", "switch to paperless bills",
    "add another line to my account", "check my data allowance",
)

VOICE_GREETINGS = (
    "Thank you for calling {company}, my name is {agent}. How can I help you today?",
    "Good morning, {company} customer care, {agent} speaking.",
    "Hi, you're through to {company}, this is {agent}. What can I do for you?",
    "Hello and thanks for holding, {agent} here at {company}.",
    "{company} support, {agent} speaking, how may I help?",
    "Hi there, it's {agent} from {company}. What's the reason for your call?",
)

WRITTEN_GREETINGS = (
    "Hi, thanks for reaching out to {company}. I'm {agent}, how can I help?",
    "Hello, {agent} from the {company} team here.",
    "Hi! This is {agent} at {company}. What can I do for you?",
    "Thanks for your message. My name is {agent} and I'll be looking after you today.",
    "Hello, this is {agent} from {company} support. How can I help today?",
    "Hi there, {agent} here. Thanks for getting in touch with {company}.",
)

PROBLEM_OPENINGS = (
    "My {product} {issue} and I'm really fed up with it.",
    "Hi, I'm contacting you because my {product} {issue}. This is the second time this month.",
    "I need someone to sort this out, my {product} {issue}.",
    "Honestly I'm furious. The {product} {issue} and nobody has helped me.",
    "Your {product} {issue}. I've had enough of this.",
    "Hello, my {product} {issue} and I can't work like this.",
    "I've been a customer for years and now my {product} {issue}. Unbelievable.",
    "Can someone please help, the {product} {issue} again.",
    "I'm so annoyed. The {product} I pay you for {issue}.",
    "This is the third time I'm getting in touch: my {product} {issue}.",
    "Look, my {product} {issue} and I'm losing patience.",
    "I'm really disappointed, my {product} {issue}.",
)

REQUEST_OPENINGS = (
    "Hi, I'd like to {request}, please.",
    "Hello, could you help me {request}?",
    "Hi there, I was hoping to {request}.",
    "Good morning, I need to {request}.",
    "Hey, quick one: I want to {request}.",
    "Hi, is it possible to {request} today?",
    "Hello, I'm getting in touch to {request}.",
    "I'd like some help to {request} if that's okay.",
)

# Empathy components, by EPITOME mechanism and level (1 = weak, 2 = strong); level 0 says nothing.
EMOTIONAL_REACTIONS = {
    1: (
        "Sorry about that.", "Apologies for the trouble.", "That's unfortunate.", "Oh, sorry to hear it.",
        "Sorry for the hassle.", "That's a shame.",
    ),
    2: (
        "I'm so sorry you've had to deal with this.", "Oh no, that sounds really stressful.",
        "I'm truly sorry, that's not the experience you deserve.", "I'm really sorry, that must have been awful.",
        "That sounds exhausting, and I'm so sorry it happened.", "I'm genuinely sorry we've put you through this.",
        "Oh, I'm sorry, I'd be upset too.", "I'm so sorry, that's really not okay.",
    ),
}

INTERPRETATIONS = {
    1: (
        "I see.", "I understand.", "Right, got it.", "Okay, I hear you.", "Understood.", "I see what you mean.",
    ),
    2: (
        "I understand how frustrating it must be to have your {product} let you down like this.",
        "It sounds like this has really disrupted your week.",
        "So you've been without a working {product} for days, which must be exhausting.",
        "I can hear how much time you've already lost on this.",
        "If I've got this right, you've explained this more than once already, and that's maddening.",
        "It must feel like nobody has been listening to you.",
        "I get it, you rely on your {product} every day and it's let you down.",
        "That would make anyone lose confidence in us, and I understand why you're upset.",
    ),
}

EXPLORATIONS = {
    1: (
        "Anything else?", "Is that all?", "What's your account number?", "Which model is it?",
        "When was that?",
    ),
    2: (
        "Can you tell me more about what happened?", "When did you first notice the problem?",
        "How has this affected you day to day?", "What have you already tried, so I don't make you repeat it?",
        "Could you walk me through what happens when it goes wrong?", "What would a good outcome look like for you?",
        "Is there anything else about this that's been worrying you?", "How are you managing in the meantime?",
    ),
}

HELPFUL_PROBLEM_ACTIONS = (
    "Let me look into your account right now.", "I'm going to arrange a replacement {product} for you.",
    "I've opened a priority case with our technical team.", "I'm running a remote check on the {product} now.",
    "I'll book an engineer at a time that suits you.", "Let me check what changed in the last update.",
    "I'm adding a credit to your account while we fix this.", "I'll stay with you while we test it together.",
    "I can see the fault on our side, let me reset it.", "I'm noting everything so you won't need to repeat it.",
)

HELPFUL_REQUEST_ACTIONS = (
    "I can do that for you right now.", "Let me pull up your account.", "That's easy to sort, one moment.",
    "I'll make that change while we talk.", "Sure, let me just confirm a couple of details.",
    "No problem, I'm updating it now.", "I'll check the options available to you.",
)

DEFLECTING_ACTIONS = (
    "Please hold.", "That's our policy.", "You'll have to contact the manufacturer.",
    "Have you tried turning it off and on again?", "I can't see anything wrong on our side.",
    "That's not something I can help with.", "You'll need to fill in the online form.",
    "I'm going to transfer you.", "The system shows it's working fine.", "Please read the FAQ on our website.",
    "I need you to verify your identity again.", "There's a standard procedure for that.",
    "It's probably your own equipment.", "That department is closed today.", "I can only log a ticket.",
)

# Agent closings carry no empathy of their own: an emotional reaction is prefixed separately and labelled.
RESOLVED_CLOSINGS = (
    "That's all fixed now.", "Everything should be working again.", "Done, the change is in place.",
    "You're all set, it's sorted.", "That's resolved, you'll get a confirmation shortly.",
    "It's fixed, I've confirmed on my side.", "All sorted, and I've added a note to your account.",
)

FOLLOW_UP_CLOSINGS = (
    "I've logged everything and I'll personally follow up by Friday.",
    "I've escalated it and I'll call you back tomorrow with an update.",
    "I couldn't finish it today, but the case is with a specialist and I'll keep you posted.",
    "I've booked a follow-up for you and put my name on the case.",
    "It isn't fixed yet, but I've made sure the next person has all the details.",
)

DISMISSIVE_CLOSINGS = (
    "There's nothing else I can do.", "You'll have to call back another time.", "I've logged a ticket.",
    "That's all I can do today.", "Someone may get back to you.", "It is what it is.",
    "You can try again later.",
)

FAREWELLS = (
    "Thanks for contacting {company}. Have a good day.", "Bye for now.", "Take care.",
    "Thanks, goodbye.", "Have a nice evening.", "Thank you, that's everything from me.",
)

CUSTOMER_REPLIES = {
    "negative": (
        "This is ridiculous, I've already explained this twice.", "I've been waiting for ages.",
        "Why does this keep happening?", "I'm paying good money for this {product}.",
        "That doesn't help me at all.", "You people never listen.", "I don't have time for this.",
        "Seriously? That's your answer?", "I already did that, it didn't work.",
        "This is the worst service I've had.", "I can't believe I'm still dealing with this.",
        "No, that's not good enough.",
    ),
    "neutral": (
        "It started on Monday.", "Okay.", "I tried restarting it already.", "It's the one I bought last year.",
        "Yes, that's right.", "Sure, the account is in my name.", "I'm not sure, maybe a week ago.",
        "Alright, go ahead.", "It's the standard model.", "Fine, I can wait.",
    ),
    "positive": (
        "Oh, thank you, that helps.", "That's great, thanks.", "Brilliant, that's a relief.",
        "Thanks, I appreciate you checking.", "Oh good, thank you for explaining.", "Perfect, that makes sense.",
        "That's kind of you, thanks.", "Great, that's exactly what I needed.",
    ),
}

CUSTOMER_CLOSINGS = {
    "negative": (
        "This is useless. I'm done with you people.", "I'll be taking my business elsewhere.",
        "Unbelievable. I'm really not happy.", "So nothing's fixed. Great.",
        "I want this on record that I'm very unhappy.", "Forget it, this was a waste of time.",
        "I expected a lot better than this.", "Well, that was pointless.", "I'm going to complain about this.",
        "Don't bother, I'll sort it myself.",
    ),
    "neutral": (
        "Okay, fine. Thanks.", "Alright, I'll wait then.", "Okay, bye.", "Fine, I'll see what happens.",
        "Right. Thanks anyway.", "Okay, noted.", "Sure, goodbye.", "Alright then.",
    ),
    "positive": (
        "Thank you so much, you've been really helpful!", "That's brilliant, thanks for sorting it.",
        "Thanks, I really appreciate your patience.", "You've made my day, thank you.",
        "Great service, thank you.", "Thanks for listening, it means a lot.", "Perfect, thank you so much.",
        "Cheers, that was really easy in the end.", "Thank you, I feel much better about it now.",
        "Lovely, thanks for your help.",
    ),
}
